"""The Okta mistakes ``okta_warnings`` detects from a config alone."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import load_config, load_config_text
from gateway.config.okta_checks import ConfigWarning, okta_warnings, read_raw_config

ORG = "https://example.okta.com"
SERVER = f"{ORG}/oauth2/aus1234567890abcdef"
ENV = {
    "OKTA_CLIENT_ID": "0oa-gateway",
    "OKTA_CLIENT_SECRET": "upstream-secret",
    "TICKETS_CLIENT_ID": "0oa-tickets",
    "TICKETS_CLIENT_SECRET": "tickets-secret",
    "WIKI_API_KEY": "wiki-key",
}
EXAMPLE = Path("config/okta.example.yaml")


def okta_config() -> dict[str, Any]:
    """Return the shipped Okta example as a mutable mapping."""
    raw = yaml.safe_load(EXAMPLE.read_text())
    assert isinstance(raw, dict)
    return raw


def warnings_for(raw: dict[str, Any]) -> list[ConfigWarning]:
    config = load_config_text(yaml.safe_dump(raw), env=ENV)
    return okta_warnings(config, copy.deepcopy(raw))


def codes(warnings: list[ConfigWarning]) -> list[tuple[str, str]]:
    return [(warning.code, warning.path) for warning in warnings]


def tickets_auth(raw: dict[str, Any]) -> dict[str, Any]:
    auth = raw["backends"]["tickets"]["auth"]
    assert isinstance(auth, dict)
    return auth


def test_okta_example_has_no_warnings() -> None:
    """The shipped Okta example loads and raises no warning."""
    config = load_config(EXAMPLE, env=ENV)
    assert okta_warnings(config, read_raw_config(EXAMPLE)) == []


def test_demo_config_has_no_warnings() -> None:
    """The demo config (dev IdP on loopback, ${VAR:-default} secrets) is clean."""
    path = Path("config/gateway.yaml")
    config = load_config(path, env={})
    assert okta_warnings(config, read_raw_config(path)) == []


@pytest.mark.parametrize("server_id", ["default", "aus1234567890abcdef"])
def test_upstream_custom_server_warns_org_fix(server_id: str) -> None:
    """An upstream issuer that is a custom server gets the org issuer as the fix."""
    raw = okta_config()
    raw["upstream"]["issuer"] = f"{ORG}/oauth2/{server_id}"
    warnings = warnings_for(raw)
    assert codes(warnings)[0] == ("okta_custom_server_for_id_jag", "upstream.issuer")
    if server_id == "default":
        assert len(warnings) == 1
    else:
        # The backend's server is now the IdP as well, which is a second mistake.
        assert codes(warnings)[1:] == [
            ("id_jag_audience_is_org_server", "backends.tickets.auth.issuer")
        ]
    assert "requested_token_type" in warnings[0].message
    assert f"set upstream.issuer to '{ORG}'" in warnings[0].message


def test_upstream_custom_server_without_id_jag_silent() -> None:
    """A custom upstream server is fine when no backend uses an ID-JAG."""
    raw = okta_config()
    raw["upstream"]["issuer"] = f"{ORG}/oauth2/default"
    del raw["backends"]["tickets"]
    raw["agents"] = {}
    assert warnings_for(raw) == []


def test_upstream_issuer_endpoint_warns() -> None:
    """A token endpoint written as the upstream issuer is named as an endpoint."""
    raw = okta_config()
    raw["upstream"]["issuer"] = f"{ORG}/oauth2/v1/token"
    warnings = warnings_for(raw)
    assert codes(warnings) == [("issuer_is_endpoint", "upstream.issuer")]
    assert repr(ORG) in warnings[0].message


def test_upstream_without_openid_warns() -> None:
    """Scopes without openid get a warning: no ID token, no sign-in."""
    raw = okta_config()
    raw["upstream"]["scopes"] = ["profile", "email", "offline_access"]
    warnings = warnings_for(raw)
    assert codes(warnings) == [("upstream_scope_missing", "upstream.scopes")]
    assert "'openid' is missing" in warnings[0].message


def test_upstream_without_offline_access_warns() -> None:
    """Scopes without offline_access get a warning: no ID token renewal."""
    raw = okta_config()
    raw["upstream"]["scopes"] = ["openid", "profile", "email"]
    warnings = warnings_for(raw)
    assert codes(warnings) == [("upstream_scope_missing", "upstream.scopes")]
    assert "'offline_access' is missing" in warnings[0].message


def test_audience_equal_to_org_issuer_warns() -> None:
    """An ID-JAG audience that is the org server itself is flagged."""
    raw = okta_config()
    tickets_auth(raw)["issuer"] = ORG
    tickets_auth(raw)["token_endpoint"] = f"{ORG}/oauth2/v1/token"
    warnings = warnings_for(raw)
    assert codes(warnings) == [
        ("id_jag_audience_is_org_server", "backends.tickets.auth.issuer"),
        ("id_jag_redeemed_at_idp", "backends.tickets.auth.token_endpoint"),
    ]
    assert "/oauth2/{authServerId}" in warnings[0].message


def test_audience_other_okta_org_root_warns() -> None:
    """The root of any Okta org as an ID-JAG audience is flagged as an org server."""
    raw = okta_config()
    other = "https://other.okta.com"
    tickets_auth(raw)["issuer"] = other
    tickets_auth(raw)["token_endpoint"] = f"{other}/oauth2/v1/token"
    assert codes(warnings_for(raw)) == [
        ("id_jag_audience_is_org_server", "backends.tickets.auth.issuer")
    ]


def test_audience_token_endpoint_warns() -> None:
    """A token endpoint written as the ID-JAG audience is flagged."""
    raw = okta_config()
    tickets_auth(raw)["issuer"] = f"{SERVER}/v1/token"
    warnings = warnings_for(raw)
    assert ("id_jag_audience_not_issuer", "backends.tickets.auth.issuer") in codes(
        warnings
    )


def test_audience_equal_to_resource_warns() -> None:
    """The MCP resource written as the ID-JAG audience is flagged."""
    raw = okta_config()
    auth = tickets_auth(raw)
    auth["issuer"] = auth["resource"]
    auth["token_endpoint"] = f"{auth['resource']}/token"
    warnings = warnings_for(raw)
    assert codes(warnings) == [
        ("id_jag_audience_not_issuer", "backends.tickets.auth.issuer")
    ]
    assert "equals auth.resource" in warnings[0].message


def test_okta_audience_trailing_slash_warns() -> None:
    """An Okta custom server issuer with a trailing '/' is not the exact issuer."""
    raw = okta_config()
    tickets_auth(raw)["issuer"] = f"{SERVER}/"
    warnings = warnings_for(raw)
    assert codes(warnings) == [("okta_audience_shape", "backends.tickets.auth.issuer")]
    assert "without a trailing '/'" in warnings[0].message


def test_token_endpoint_outside_issuer_warns() -> None:
    """A token endpoint of another server than the issuer is flagged."""
    raw = okta_config()
    tickets_auth(raw)["token_endpoint"] = f"{ORG}/oauth2/default/v1/token"
    warnings = warnings_for(raw)
    assert codes(warnings) == [
        ("token_endpoint_outside_issuer", "backends.tickets.auth.token_endpoint")
    ]
    assert "not under auth.issuer" in warnings[0].message


def test_okta_token_endpoint_shape_warns() -> None:
    """Under an Okta custom server, only {issuer}/v1/token is accepted silently."""
    raw = okta_config()
    tickets_auth(raw)["token_endpoint"] = f"{SERVER}/v1/authorize"
    warnings = warnings_for(raw)
    assert codes(warnings) == [
        ("okta_token_endpoint_shape", "backends.tickets.auth.token_endpoint")
    ]
    assert f"set it to {SERVER}/v1/token" in warnings[0].message


def test_resource_gateway_url_warns() -> None:
    """The gateway's own URL as the ID-JAG resource is flagged."""
    raw = okta_config()
    tickets_auth(raw)["resource"] = "https://mcp-gateway.example.com/tickets/mcp"
    warnings = warnings_for(raw)
    assert codes(warnings) == [
        ("id_jag_resource_is_gateway", "backends.tickets.auth.resource")
    ]


def test_resource_not_url_warns() -> None:
    """A resource that is not an http(s) URL is flagged."""
    raw = okta_config()
    tickets_auth(raw)["resource"] = "api://tickets"
    assert codes(warnings_for(raw)) == [
        ("id_jag_resource_not_url", "backends.tickets.auth.resource")
    ]


def test_resource_trailing_slash_warns() -> None:
    """A resource with a trailing '/' gets the exact-match reminder."""
    raw = okta_config()
    tickets_auth(raw)["resource"] = "https://tickets-mcp.internal.example.com/mcp/"
    warnings = warnings_for(raw)
    assert codes(warnings) == [
        ("id_jag_resource_not_canonical", "backends.tickets.auth.resource")
    ]
    assert "Resource mismatch" in warnings[0].message


def test_http_issuer_outside_loopback_warns() -> None:
    """Plain http to a non-loopback issuer and token endpoint is flagged."""
    raw = okta_config()
    tickets_auth(raw)["issuer"] = "http://as.internal.example.com"
    tickets_auth(raw)["token_endpoint"] = "http://as.internal.example.com/token"
    assert codes(warnings_for(raw)) == [
        ("http_outside_loopback", "backends.tickets.auth.issuer"),
        ("http_outside_loopback", "backends.tickets.auth.token_endpoint"),
    ]


def test_http_public_url_outside_loopback_warns() -> None:
    """A plain http public URL on a real host is flagged."""
    raw = okta_config()
    raw["server"]["public_url"] = "http://mcp-gateway.example.com"
    assert codes(warnings_for(raw)) == [("http_outside_loopback", "server.public_url")]


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "localhost"])
def test_http_loopback_silent(host: str) -> None:
    """Plain http on a loopback host raises no warning."""
    raw = okta_config()
    raw["server"]["public_url"] = f"http://{host}:8000"
    assert warnings_for(raw) == []


def test_id_jag_without_scopes_warns() -> None:
    """An ID-JAG backend that requests no scope is flagged."""
    raw = okta_config()
    tickets_auth(raw)["scopes"] = []
    assert codes(warnings_for(raw)) == [
        ("id_jag_scopes_missing", "backends.tickets.auth.scopes")
    ]


def test_empty_client_secret_warns() -> None:
    """A secret method with an empty secret is flagged for both clients."""
    raw = okta_config()
    raw["upstream"]["client_secret"] = "${OKTA_EMPTY:-}"
    tickets_auth(raw)["client_secret"] = "${TICKETS_EMPTY:-}"
    assert codes(warnings_for(raw)) == [
        ("client_secret_missing", "upstream.client_secret"),
        ("client_secret_missing", "backends.tickets.auth.client_secret"),
    ]


def test_inline_secrets_warn_without_value() -> None:
    """Secrets written into the file are flagged, and the message omits them."""
    raw = okta_config()
    raw["upstream"]["client_secret"] = "s3cret-upstream"
    tickets_auth(raw)["client_secret"] = "s3cret-tickets"
    raw["backends"]["wiki"]["auth"]["value"] = "s3cret-wiki"
    raw["backends"]["basic"] = {
        "path": "/basic/mcp",
        "url": "https://basic.internal.example.com/mcp",
        "auth": {"kind": "basic", "username": "gw", "password": "s3cret-basic"},
    }
    warnings = warnings_for(raw)
    assert codes(warnings) == [
        ("inline_secret", "upstream.client_secret"),
        ("inline_secret", "backends.tickets.auth.client_secret"),
        ("inline_secret", "backends.wiki.auth.value"),
        ("inline_secret", "backends.basic.auth.password"),
    ]
    for warning in warnings:
        assert "s3cret" not in str(warning)


def test_inline_secret_check_skipped_without_raw() -> None:
    """Without the raw file, interpolated secrets are not mistaken for inline."""
    config = load_config(EXAMPLE, env=ENV)
    assert okta_warnings(config) == []


def test_read_raw_config_unreadable_returns_none(tmp_path: Path) -> None:
    """A missing or non-mapping file gives None rather than an exception."""
    assert read_raw_config(tmp_path / "absent.yaml") is None
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    assert read_raw_config(listing) is None


def test_warning_str_names_key_first() -> None:
    """A warning prints as '<yaml key>: <message>'."""
    warning = ConfigWarning("code", "upstream.issuer", "the problem; the fix")
    assert str(warning) == "upstream.issuer: the problem; the fix"


def test_okta_pss_assertion_algorithm_warns(tmp_path: Path) -> None:
    """A PS256 client assertion for an Okta server is flagged; RS256 is not."""
    key_file = str(tmp_path / "key.jwk.json")
    raw = okta_config()
    for client in (raw["upstream"], tickets_auth(raw)):
        del client["client_secret"]
        client["token_endpoint_auth_method"] = "private_key_jwt"
        client["private_key_file"] = key_file
        client["private_key_algorithm"] = "PS256"
    warnings = warnings_for(raw)
    assert codes(warnings) == [
        ("okta_assertion_algorithm", "upstream.private_key_algorithm"),
        ("okta_assertion_algorithm", "backends.tickets.auth.private_key_algorithm"),
    ]
    assert "not PS256" in warnings[0].message
    for client in (raw["upstream"], tickets_auth(raw)):
        client["private_key_algorithm"] = "RS256"
    assert warnings_for(raw) == []
