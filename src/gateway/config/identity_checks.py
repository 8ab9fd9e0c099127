"""Load-time checks of pre-registered clients and per-agent upstream clients.

The loader runs :func:`identity_problems` after decoding, so each problem is
reported with its YAML path together with every other problem of the file.
"""

from __future__ import annotations

import re

from gateway.config.model import GatewayConfig, IdJagAuth, OAuthClientConfig
from gateway.oauth.clients import GRANT_TYPES, MAX_CLIENT_NAME_LENGTH
from gateway.oauth.redirects import redirect_uri_problem

__all__ = ["MIN_CLIENT_SECRET_LENGTH", "identity_problems"]

MIN_CLIENT_SECRET_LENGTH = 32
"""Shortest secret accepted for a pre-registered client.

The gateway keeps only a SHA-256 of each client secret, which protects a long
random value but not a short or guessable one.
"""

MAX_PRE_REGISTERED_REDIRECT_URIS = 20

# RFC 6749 appendix A.1: a client_id is printable ASCII. URLs are excluded
# because the gateway reads an http(s) client_id as a metadata document URL.
_CLIENT_ID = re.compile(r"[\x21-\x7e]{1,200}")
_SECRET_METHODS = ("client_secret_basic", "client_secret_post")


def identity_problems(config: GatewayConfig) -> list[str]:
    """Return the problems of ``oauth.clients`` and the per-agent clients.

    Checks each pre-registered client, that no upstream client id is
    configured twice, and that ``auth.agent_clients`` names only agents that
    have their own upstream client.
    """
    problems: list[str] = []
    for client_id, client in config.oauth.clients.items():
        problems.extend(_client_problems(client_id, client))
    problems.extend(_upstream_client_problems(config))
    problems.extend(_agent_client_problems(config))
    return problems


def _client_problems(client_id: str, client: OAuthClientConfig) -> list[str]:
    where = f"oauth.clients.{client_id}"
    problems: list[str] = []
    if not _CLIENT_ID.fullmatch(client_id) or client_id.lower().startswith(
        ("http://", "https://")
    ):
        problems.append(
            f"{where}: invalid client_id {client_id!r}; use 1 to 200 printable "
            "ASCII characters without spaces, and not an http(s) URL, which "
            "names a client metadata document"
        )
    if not client.redirect_uris:
        problems.append(f"{where}.redirect_uris: list at least one redirect URI")
    elif len(client.redirect_uris) > MAX_PRE_REGISTERED_REDIRECT_URIS:
        problems.append(
            f"{where}.redirect_uris: {len(client.redirect_uris)} URIs given; "
            f"at most {MAX_PRE_REGISTERED_REDIRECT_URIS} are allowed"
        )
    for index, uri in enumerate(client.redirect_uris):
        problem = redirect_uri_problem(uri)
        if problem is not None:
            problems.append(f"{where}.redirect_uris[{index}]: {problem}")
    problems.extend(_credential_problems(where, client))
    unsupported = [grant for grant in client.grant_types if grant not in GRANT_TYPES]
    if unsupported or "authorization_code" not in client.grant_types:
        problems.append(
            f"{where}.grant_types: {client.grant_types!r} must include "
            f"'authorization_code' and contain only {list(GRANT_TYPES)}"
        )
    name = client.client_name
    if name is not None and (
        not name or len(name) > MAX_CLIENT_NAME_LENGTH or not name.isprintable()
    ):
        problems.append(
            f"{where}.client_name: give 1 to {MAX_CLIENT_NAME_LENGTH} printable "
            "characters, or leave it out"
        )
    return problems


def _credential_problems(where: str, client: OAuthClientConfig) -> list[str]:
    method = client.token_endpoint_auth_method
    problems: list[str] = []
    if method in _SECRET_METHODS:
        if not client.client_secret:
            problems.append(
                f"{where}.client_secret: required for {method}; set it, usually "
                "as ${NAME}"
            )
        elif len(client.client_secret) < MIN_CLIENT_SECRET_LENGTH:
            problems.append(
                f"{where}.client_secret: the secret has {len(client.client_secret)} "
                f"characters; use a random one of at least {MIN_CLIENT_SECRET_LENGTH}"
                ", such as the output of "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
    elif client.client_secret:
        problems.append(
            f"{where}.client_secret: not allowed with token_endpoint_auth_method "
            f"{method!r}; remove it"
        )
    if method == "private_key_jwt":
        if not client.jwks_file:
            problems.append(
                f"{where}.jwks_file: required for private_key_jwt; point it at "
                "the client's public JWK Set"
            )
    elif client.jwks_file:
        problems.append(
            f"{where}.jwks_file: applies only to private_key_jwt, but "
            f"token_endpoint_auth_method is {method!r}"
        )
    return problems


def _upstream_client_problems(config: GatewayConfig) -> list[str]:
    problems: list[str] = []
    owners = {config.upstream.client_id: "upstream"}
    for name, agent in config.agents.items():
        if agent.upstream is None:
            continue
        client_id = agent.upstream.client_id
        owner = owners.get(client_id)
        if owner is not None:
            problems.append(
                f"agents.{name}.upstream.client_id: {client_id!r} is already the "
                f"client of {owner}; give each agent its own client at the IdP, "
                f"or leave out agents.{name}.upstream to use the gateway's"
            )
            continue
        owners[client_id] = f"agents.{name}.upstream"
    return problems


def _agent_client_problems(config: GatewayConfig) -> list[str]:
    problems: list[str] = []
    for backend_name, backend in config.backends.items():
        if not isinstance(backend.auth, IdJagAuth):
            continue
        for agent_name in backend.auth.agent_clients:
            where = f"backends.{backend_name}.auth.agent_clients.{agent_name}"
            agent = config.agents.get(agent_name)
            if agent is None:
                known = ", ".join(sorted(config.agents)) or "none"
                problems.append(
                    f"{where}: unknown agent {agent_name!r}; known agents: {known}"
                )
            elif agent.upstream is None:
                problems.append(
                    f"{where}: agent {agent_name!r} has no upstream client "
                    f"(agents.{agent_name}.upstream), so no ID-JAG ever names "
                    "this client; add one or remove this entry"
                )
    return problems
