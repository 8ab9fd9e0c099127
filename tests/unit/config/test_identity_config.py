"""Config of pre-registered clients and per-agent upstream clients.

Each rule gets one invalid config and the message it must produce, with the
YAML path of the bad value.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from gateway.config import load_config_text
from gateway.config.okta_checks import okta_warnings
from gateway.errors import ConfigError

SECRET = "s" * 40

BASE: dict[str, Any] = {
    "server": {"public_url": "http://127.0.0.1:8000"},
    "upstream": {
        "issuer": "http://127.0.0.1:9000",
        "client_id": "agent-proxy",
        "client_secret": "gateway-secret",
    },
    "oauth": {
        "clients": {
            "cursor-desktop": {
                "client_name": "cursor",
                "redirect_uris": ["http://127.0.0.1:33418/callback"],
                "client_secret": SECRET,
            }
        }
    },
    "agents": {
        "cursor": {
            "match": {"client_ids": ["cursor-desktop"]},
            "upstream": {"client_id": "cursor-agent", "client_secret": "agent"},
            "backends": ["employees"],
        },
        "claude-code": {"match": {"client_name": "claude-code"}},
    },
    "backends": {
        "employees": {
            "path": "/employees/mcp",
            "url": "http://127.0.0.1:8001/mcp",
            "auth": {
                "kind": "id-jag",
                "issuer": "http://127.0.0.1:9000/oauth2/employees",
                "token_endpoint": "http://127.0.0.1:9000/oauth2/employees/v1/token",
                "resource": "http://127.0.0.1:8001/mcp",
                "client_id": "agent-proxy-at-employees",
                "client_secret": "employees",
                "scopes": ["employees:read"],
                "agent_clients": {
                    "cursor": {
                        "client_id": "cursor-at-employees",
                        "client_secret": "cursor-employees",
                    }
                },
            },
        }
    },
}


def config_with(**paths: Any) -> dict[str, Any]:
    """Return BASE with values set at ``a__b__c`` paths; None deletes a key."""
    raw = copy.deepcopy(BASE)
    for path, value in paths.items():
        *parents, last = path.split("__")
        node = raw
        for parent in parents:
            node = node.setdefault(parent, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return raw


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(yaml.safe_dump(raw), env={})
    return info.value.problems


def client(**changes: Any) -> dict[str, Any]:
    entry = copy.deepcopy(BASE["oauth"]["clients"]["cursor-desktop"])
    entry.update(changes)
    return {key: value for key, value in entry.items() if value is not None}


def test_identity_config_valid_base_loads() -> None:
    """The base config with a pre-registered client and agent clients loads."""
    config = load_config_text(yaml.safe_dump(BASE), env={})
    assert config.oauth.clients["cursor-desktop"].client_secret == SECRET
    cursor = config.agents["cursor"]
    assert cursor.upstream is not None
    assert cursor.upstream.client_id == "cursor-agent"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            client(redirect_uris=["http://example.com/cb"]),
            "oauth.clients.cursor-desktop.redirect_uris[0]: ",
        ),
        (client(redirect_uris=[]), "oauth.clients.cursor-desktop.redirect_uris: "),
        (
            client(client_secret=None),
            "oauth.clients.cursor-desktop.client_secret: required for "
            "client_secret_basic",
        ),
        (
            client(client_secret="short"),
            "oauth.clients.cursor-desktop.client_secret: the secret has 5 characters",
        ),
        (
            client(token_endpoint_auth_method="none"),
            "oauth.clients.cursor-desktop.client_secret: not allowed with "
            "token_endpoint_auth_method 'none'",
        ),
        (
            client(token_endpoint_auth_method="private_key_jwt", client_secret=None),
            "oauth.clients.cursor-desktop.jwks_file: required for private_key_jwt",
        ),
        (
            client(jwks_file="keys.json"),
            "oauth.clients.cursor-desktop.jwks_file: applies only to private_key_jwt",
        ),
        (
            client(grant_types=["refresh_token"]),
            "oauth.clients.cursor-desktop.grant_types: ['refresh_token'] must "
            "include 'authorization_code'",
        ),
        (
            client(grant_types=["authorization_code", "client_credentials"]),
            "oauth.clients.cursor-desktop.grant_types: ",
        ),
    ],
    ids=[
        "http-redirect",
        "no-redirect",
        "secret-missing",
        "secret-short",
        "secret-with-none",
        "jwks-missing",
        "jwks-without-pkjwt",
        "grants-no-code",
        "grants-unknown",
    ],
)
def test_preregistered_client_invalid_value_names_path(
    entry: dict[str, Any], expected: str
) -> None:
    """Each invalid client value is reported with its YAML path."""
    found = problems(config_with(oauth__clients={"cursor-desktop": entry}))
    assert any(problem.startswith(expected) for problem in found), found


def test_preregistered_client_url_id_rejected() -> None:
    """A client_id that is an https URL would name a metadata document."""
    found = problems(
        config_with(oauth__clients={"https://client.example/meta.json": client()})
    )
    assert any("invalid client_id" in problem for problem in found), found


def test_preregistered_client_wrong_type_names_key() -> None:
    """A type error inside one client names that client's key."""
    found = problems(
        config_with(oauth__clients={"cursor-desktop": client(redirect_uris="x")})
    )
    assert found == [
        "oauth.clients.cursor-desktop.redirect_uris: Expected `array`, got `str`"
    ]


def test_preregistered_client_unknown_method_rejected() -> None:
    """An unknown token_endpoint_auth_method names the client."""
    found = problems(
        config_with(
            oauth__clients={
                "cursor-desktop": client(token_endpoint_auth_method="tls_client_auth")
            }
        )
    )
    assert len(found) == 1
    assert found[0].startswith(
        "oauth.clients.cursor-desktop.token_endpoint_auth_method: Invalid value; "
        "expected one of: client_secret_basic, client_secret_post"
    )
    assert "tls_client_auth" not in found[0]


def test_agent_upstream_same_as_gateway_client_rejected() -> None:
    """An agent's upstream client must differ from the gateway's."""
    raw = config_with()
    raw["agents"]["cursor"]["upstream"]["client_id"] = "agent-proxy"
    found = problems(raw)
    assert found == [
        "agents.cursor.upstream.client_id: 'agent-proxy' is already the client of "
        "upstream; give each agent its own client at the IdP, or leave out "
        "agents.cursor.upstream to use the gateway's"
    ]


def test_agent_upstream_shared_by_two_agents_rejected() -> None:
    """Two agents may not share one upstream client."""
    raw = config_with()
    raw["agents"]["claude-code"]["upstream"] = {"client_id": "cursor-agent"}
    found = problems(raw)
    # yaml.safe_dump sorts keys, so claude-code comes first and cursor clashes.
    assert found == [
        "agents.cursor.upstream.client_id: 'cursor-agent' is already the client "
        "of agents.claude-code.upstream; give each agent its own client at the "
        "IdP, or leave out agents.cursor.upstream to use the gateway's"
    ]


def test_agent_upstream_private_key_jwt_needs_key_file() -> None:
    """private_key_jwt for an agent's upstream client needs private_key_file."""
    raw = config_with()
    raw["agents"]["cursor"]["upstream"] = {
        "client_id": "cursor-agent",
        "token_endpoint_auth_method": "private_key_jwt",
    }
    found = problems(raw)
    assert found == [
        "agents.cursor.upstream: private_key_file is required when "
        "token_endpoint_auth_method is private_key_jwt"
    ]


def test_agent_clients_unknown_agent_rejected() -> None:
    """auth.agent_clients may only name configured agents."""
    raw = config_with()
    auth = raw["backends"]["employees"]["auth"]
    auth["agent_clients"]["windsurf"] = {"client_id": "w", "client_secret": "w"}
    found = problems(raw)
    assert found == [
        "backends.employees.auth.agent_clients.windsurf: unknown agent 'windsurf'; "
        "known agents: claude-code, cursor"
    ]


def test_agent_clients_agent_without_upstream_rejected() -> None:
    """An agent_clients entry for an agent without its own client is unused."""
    raw = config_with()
    auth = raw["backends"]["employees"]["auth"]
    auth["agent_clients"]["claude-code"] = {"client_id": "c", "client_secret": "c"}
    found = problems(raw)
    assert len(found) == 1
    assert found[0].startswith(
        "backends.employees.auth.agent_clients.claude-code: agent 'claude-code' "
        "has no upstream client"
    )


def test_identity_problems_reported_together() -> None:
    """Problems of several clients and agents come in one error."""
    raw = config_with(
        oauth__clients={
            "a": client(client_secret="short"),
            "b": client(redirect_uris=["ftp://x/cb"]),
        }
    )
    raw["agents"]["cursor"]["upstream"]["client_id"] = "agent-proxy"
    found = problems(raw)
    assert len(found) == 3, found


@pytest.mark.parametrize(
    ("client_ids", "method"),
    [([], "client_secret_basic"), (["cursor-desktop"], "none")],
    ids=["no-client-ids", "only-public-client"],
)
def test_okta_check_agent_upstream_never_verified_warns(
    client_ids: list[str], method: str
) -> None:
    """An agent upstream that no verifiable client can reach gets a warning."""
    raw = config_with()
    raw["agents"]["cursor"]["match"]["client_ids"] = client_ids
    entry = raw["oauth"]["clients"]["cursor-desktop"]
    entry["token_endpoint_auth_method"] = method
    if method == "none":
        del entry["client_secret"]
    config = load_config_text(yaml.safe_dump(raw), env={})
    warnings = [w for w in okta_warnings(config) if w.code == "agent_upstream_unused"]
    assert [w.path for w in warnings] == ["agents.cursor.upstream"]
    assert "never verified" in warnings[0].message


def test_okta_check_agent_upstream_with_verifiable_client_quiet() -> None:
    """A confidential pre-registered client in client_ids gives no warning."""
    config = load_config_text(yaml.safe_dump(BASE), env={})
    codes = [warning.code for warning in okta_warnings(config)]
    assert "agent_upstream_unused" not in codes
