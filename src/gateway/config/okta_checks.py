"""Warnings about identity settings that Okta, or any ID-JAG exchange, rejects.

The checks look at the config alone and make no network request. A warning does
not make a config invalid: ``agent-proxy check`` prints it and still exits 0,
and ``agent-proxy run`` logs it as a ``config.warning`` event. Each warning
names the YAML key, the problem and the fix.

The Okta facts behind the checks come from Okta's developer documentation on
Cross App Access and AI agent token exchange (developer.okta.com, 2026):

- Okta issues ID-JAGs only at the org authorization server, ``https://{org}``
  with token endpoint ``/oauth2/v1/token``. A custom authorization server
  (``/oauth2/{authServerId}``, such as ``/oauth2/default``) rejects the
  ``requested_token_type`` of the exchange.
- A resource app protected by Okta uses a custom authorization server. Its
  issuer, ``https://{org}/oauth2/{authServerId}``, is the ID-JAG ``audience``,
  and the ID-JAG is redeemed at ``{issuer}/v1/token``.
- An IdP must not issue access tokens against its own ID-JAGs, so the
  resource's authorization server cannot be the org authorization server.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gateway.config.model import GatewayConfig, IdJagAuth, UpstreamConfig
from gateway.config.yaml_safety import parse_yaml, size_problem

__all__ = ["ConfigWarning", "okta_warnings", "read_raw_config"]

# Okta's own domains. An org on a custom URL domain is not recognised by host,
# so the checks that need to know "this is Okta" skip it.
_OKTA_DOMAINS = ("okta.com", "oktapreview.com", "okta-emea.com")

# The path of an Okta custom authorization server's issuer: /oauth2/{id}.
_CUSTOM_SERVER_PATH = re.compile(r"/oauth2/([A-Za-z0-9_-]+)")

# Path parts that belong to an endpoint or a discovery document, never to an
# issuer (Okta endpoints are {issuer}/v1/...).
_ENDPOINT_PATH = re.compile(r"(/v1(/|$)|/\.well-known/|/token$|/authorize$|/keys$)")

_SECRET_METHODS = ("client_secret_basic", "client_secret_post")

# Keys whose value is a credential wherever they appear in the file.
_SECRET_KEYS = frozenset({"client_secret", "password", "private_key"})


@dataclass(frozen=True)
class ConfigWarning:
    """One config setting that is valid but will likely fail against the IdP.

    Attributes:
        code: Stable identifier of the kind of mistake, such as
            ``okta_custom_server_for_id_jag``; tests and log queries use it.
        path: The YAML key concerned, such as ``backends.tickets.auth.issuer``.
        message: The problem and the fix, as one or two sentences. It never
            contains a secret.
    """

    code: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def read_raw_config(path: str | Path) -> dict[str, Any] | None:
    """Read a config file's YAML without ``${VAR}`` interpolation.

    Returns:
        The top-level mapping, or None if the file cannot be read or parsed
        (the loader reports those problems itself).
    """
    file = Path(path)
    try:
        if size_problem(str(file), file.stat().st_size) is not None:
            return None
        raw = parse_yaml(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return None
    return raw if isinstance(raw, dict) else None


def okta_warnings(
    config: GatewayConfig, raw: Mapping[str, Any] | None = None
) -> list[ConfigWarning]:
    """List the known Okta and ID-JAG mistakes found in a valid config.

    Args:
        config: The loaded config, with environment variables resolved.
        raw: The same file before interpolation (see :func:`read_raw_config`).
            Only the check for secrets written into the file needs it, and
            that check is skipped when it is None.

    Returns:
        The warnings in file order: server, upstream, backends, secrets.
    """
    warnings: list[ConfigWarning] = []
    warnings.extend(_check_http("server.public_url", config.server.public_url))
    id_jag = {
        name: backend.auth
        for name, backend in config.backends.items()
        if isinstance(backend.auth, IdJagAuth)
    }
    warnings.extend(_check_upstream(config.upstream, uses_id_jag=bool(id_jag)))
    for name, auth in id_jag.items():
        warnings.extend(_check_id_jag(f"backends.{name}.auth", auth, config))
    warnings.extend(_check_agent_upstreams(config))
    if raw is not None:
        warnings.extend(_check_inline_secrets(raw))
    return warnings


def _check_upstream(
    upstream: UpstreamConfig, *, uses_id_jag: bool
) -> Iterator[ConfigWarning]:
    path = "upstream.issuer"
    issuer = upstream.issuer
    yield from _check_http(path, issuer)
    parts = urlsplit(issuer)
    org = f"{parts.scheme}://{parts.netloc}"
    if _ENDPOINT_PATH.search(parts.path):
        yield ConfigWarning(
            "issuer_is_endpoint",
            path,
            f"{issuer!r} is an endpoint URL, not an issuer; write the issuer "
            f"itself (for the Okta org authorization server: {org!r})",
        )
    elif uses_id_jag and _CUSTOM_SERVER_PATH.fullmatch(parts.path):
        yield ConfigWarning(
            "okta_custom_server_for_id_jag",
            path,
            f"{issuer!r} is an Okta custom authorization server, so ID-JAGs "
            f"would be requested at {issuer}/v1/token, which rejects "
            f"requested_token_type; Okta issues ID-JAGs only at the org "
            f"authorization server, so set upstream.issuer to {org!r}",
        )
    scopes = set(upstream.scopes)
    if "openid" not in scopes:
        yield ConfigWarning(
            "upstream_scope_missing",
            "upstream.scopes",
            "'openid' is missing, so the IdP returns no ID token and sign-in "
            "fails; add openid",
        )
    if uses_id_jag and "offline_access" not in scopes:
        yield ConfigWarning(
            "upstream_scope_missing",
            "upstream.scopes",
            "'offline_access' is missing, so the IdP returns no refresh token "
            "and the gateway cannot renew the ID token that every ID-JAG "
            "exchange uses; users must sign in again when it expires; add "
            "offline_access (and allow the Refresh Token grant in Okta)",
        )
    yield from _check_secret_present("upstream", upstream)
    yield from _check_assertion_algorithm("upstream", upstream, issuer)


def _check_id_jag(
    where: str, auth: IdJagAuth, config: GatewayConfig
) -> Iterator[ConfigWarning]:
    issuer, endpoint = auth.issuer, auth.token_endpoint
    if auth.discovery:
        # Dynamic mode: the issuer and token endpoint are found at run time.
        for index, allowed in enumerate(auth.allowed_issuers):
            yield from _check_http(f"{where}.allowed_issuers[{index}]", allowed)
    else:
        yield from _check_http(f"{where}.issuer", issuer)
        yield from _check_http(f"{where}.token_endpoint", endpoint)
        yield from _check_audience(where, auth, config)
        yield from _check_token_endpoint(where, auth, config)
    yield from _check_resource(where, auth, config)
    if not auth.scopes:
        yield ConfigWarning(
            "id_jag_scopes_missing",
            f"{where}.scopes",
            "no scope is requested, so the backend token gets the authorization "
            "server's default scopes, if it has any; list the scopes the backend "
            "needs, as allowed by the Okta managed connection",
        )
    yield from _check_secret_present(where, auth)
    yield from _check_assertion_algorithm(where, auth, issuer)


def _check_audience(
    where: str, auth: IdJagAuth, config: GatewayConfig
) -> Iterator[ConfigWarning]:
    path = f"{where}.issuer"
    issuer = auth.issuer
    parts = urlsplit(issuer)
    if _ENDPOINT_PATH.search(parts.path):
        yield ConfigWarning(
            "id_jag_audience_not_issuer",
            path,
            f"{issuer!r} is an endpoint URL, but the ID-JAG audience must be the "
            "authorization server's issuer exactly as its metadata states it "
            "(for Okta: https://{org}/oauth2/{authServerId})",
        )
        return
    if _same_url(issuer, auth.resource):
        yield ConfigWarning(
            "id_jag_audience_not_issuer",
            path,
            f"{issuer!r} equals auth.resource; the ID-JAG audience is the "
            "backend authorization server's issuer, not the MCP resource",
        )
        return
    if _same_url(issuer, config.upstream.issuer) or (
        _is_okta(parts.hostname) and parts.path in ("", "/")
    ):
        yield ConfigWarning(
            "id_jag_audience_is_org_server",
            path,
            f"{issuer!r} is the IdP's own authorization server (upstream.issuer "
            "or an Okta org), which must not issue access tokens against its own "
            "ID-JAGs; set it to the issuer of "
            "the resource app's custom authorization server, "
            "https://{org}/oauth2/{authServerId}",
        )
        return
    if _is_okta(parts.hostname) and not _CUSTOM_SERVER_PATH.fullmatch(parts.path):
        yield ConfigWarning(
            "okta_audience_shape",
            path,
            f"{issuer!r} is not an Okta custom authorization server issuer; Okta "
            "writes them https://{org}/oauth2/{authServerId}, without a trailing "
            "'/', and the ID-JAG audience must equal that string exactly",
        )


def _check_token_endpoint(
    where: str, auth: IdJagAuth, config: GatewayConfig
) -> Iterator[ConfigWarning]:
    path = f"{where}.token_endpoint"
    issuer, endpoint = auth.issuer.rstrip("/"), auth.token_endpoint
    upstream = config.upstream.issuer.rstrip("/")
    if _same_url(endpoint, f"{upstream}/oauth2/v1/token"):
        yield ConfigWarning(
            "id_jag_redeemed_at_idp",
            path,
            f"{endpoint!r} is the IdP's own token endpoint, where ID-JAGs are "
            "issued, not redeemed; use the token endpoint of the backend's "
            f"authorization server ({issuer}/v1/token for an Okta custom "
            "authorization server)",
        )
        return
    if not endpoint.startswith(f"{issuer}/"):
        yield ConfigWarning(
            "token_endpoint_outside_issuer",
            path,
            f"{endpoint!r} is not under auth.issuer {auth.issuer!r}; the two "
            "usually belong to different authorization servers. Copy "
            "token_endpoint from the issuer's metadata "
            f"({issuer}/.well-known/oauth-authorization-server)",
        )
        return
    parts = urlsplit(issuer)
    okta_custom = _is_okta(parts.hostname) and _CUSTOM_SERVER_PATH.fullmatch(parts.path)
    if okta_custom and endpoint != f"{issuer}/v1/token":
        yield ConfigWarning(
            "okta_token_endpoint_shape",
            path,
            f"{endpoint!r} is not the token endpoint of the Okta custom "
            f"authorization server {issuer!r}; set it to {issuer}/v1/token",
        )


def _check_resource(
    where: str, auth: IdJagAuth, config: GatewayConfig
) -> Iterator[ConfigWarning]:
    path = f"{where}.resource"
    resource = auth.resource
    parts = urlsplit(resource)
    public_url = config.server.public_url.rstrip("/")
    if resource == public_url or resource.startswith(f"{public_url}/"):
        yield ConfigWarning(
            "id_jag_resource_is_gateway",
            path,
            f"{resource!r} is a gateway URL; the ID-JAG resource is the backend's "
            "own RFC 9728 resource identifier, as configured for it in Okta (for "
            "example the backend's MCP URL)",
        )
    elif parts.scheme not in ("http", "https") or not parts.hostname:
        yield ConfigWarning(
            "id_jag_resource_not_url",
            path,
            f"{resource!r} is not an http(s) URL; MCP resource identifiers are "
            "the server's canonical URL, such as https://mcp.example.com/mcp",
        )
    elif parts.fragment or resource.endswith("/"):
        yield ConfigWarning(
            "id_jag_resource_not_canonical",
            path,
            f"{resource!r} has a trailing '/' or a fragment; Okta compares "
            "resource byte for byte with the managed connection and answers a "
            "difference with invalid_target ('Resource mismatch'), so keep it "
            "only if the resource in Okta is written the same way",
        )


def _check_agent_upstreams(config: GatewayConfig) -> Iterator[ConfigWarning]:
    # Only a verified agent signs users in through its own upstream client.
    # An agent is verified through a confidential pre-registered client or a
    # client metadata document (an https client_id) listed in its client_ids.
    verifiable = {
        client_id
        for client_id, client in config.oauth.clients.items()
        if client.token_endpoint_auth_method != "none"
    }
    for name, agent in config.agents.items():
        if agent.upstream is None:
            continue
        ids = agent.match.client_ids
        if any(i in verifiable or i.startswith("https://") for i in ids):
            continue
        if ids:
            problem = (
                f"none of agents.{name}.match.client_ids {ids!r} is a confidential "
                "oauth.clients entry or a client metadata document URL"
            )
        else:
            problem = f"agents.{name}.match.client_ids is empty"
        yield ConfigWarning(
            "agent_upstream_unused",
            f"agents.{name}.upstream",
            f"{problem}, so agent {name!r} is never verified and its own "
            "upstream client is never used; pre-register the agent's client in "
            "oauth.clients and list its id in match.client_ids",
        )


def _check_http(path: str, url: str) -> Iterator[ConfigWarning]:
    parts = urlsplit(url)
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        yield ConfigWarning(
            "http_outside_loopback",
            path,
            f"{url!r} uses plain http on a non-loopback host, so tokens and "
            "credentials cross the network unencrypted; use https (plain http is "
            "only for 127.0.0.1, ::1 and localhost)",
        )


def _check_secret_present(
    where: str, client: UpstreamConfig | IdJagAuth
) -> Iterator[ConfigWarning]:
    if client.token_endpoint_auth_method in _SECRET_METHODS and not (
        client.client_secret
    ):
        yield ConfigWarning(
            "client_secret_missing",
            f"{where}.client_secret",
            f"the client authenticates with {client.token_endpoint_auth_method} "
            "but the secret is empty, so the authorization server answers "
            "invalid_client; set it, usually as ${NAME}",
        )


def _check_assertion_algorithm(
    where: str, client: UpstreamConfig | IdJagAuth, issuer: str
) -> Iterator[ConfigWarning]:
    # Okta's client authentication guide (developer.okta.com/docs/api/openapi/
    # okta-oauth/guides/client-auth) lists RS256/384/512 and ES256/384/512 for
    # private_key_jwt. PS* is absent from that list; no Okta error for it is
    # known, so this is a warning and not a config error (the operator guide's
    # table of warnings lists it).
    if client.token_endpoint_auth_method != "private_key_jwt":
        return
    algorithm = str(getattr(client, "private_key_algorithm", ""))
    if _is_okta(urlsplit(issuer).hostname) and algorithm.startswith("PS"):
        yield ConfigWarning(
            "okta_assertion_algorithm",
            f"{where}.private_key_algorithm",
            f"Okta accepts client assertions signed with RS256, RS384, RS512, "
            f"ES256, ES384 or ES512, not {algorithm}; pick one of those that "
            "matches the key registered in Okta",
        )


def _check_inline_secrets(raw: Mapping[str, Any]) -> Iterator[ConfigWarning]:
    for path, value in _secret_values(raw, ""):
        if isinstance(value, str) and value and "${" not in value:
            yield ConfigWarning(
                "inline_secret",
                path,
                "the secret is written into the config file; put it in an "
                "environment variable and write ${NAME} here",
            )


def _secret_values(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        static_key = node.get("kind") == "static-key"
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            if key in _SECRET_KEYS or (static_key and key == "value"):
                yield child, value
            else:
                yield from _secret_values(value, child)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _secret_values(item, f"{path}[{index}]")


def _is_okta(host: str | None) -> bool:
    if not host:
        return False
    host = host.lower()
    return any(host == d or host.endswith(f".{d}") for d in _OKTA_DOMAINS)


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _same_url(first: str, second: str) -> bool:
    return first.rstrip("/").lower() == second.rstrip("/").lower()
