"""Policies that name a backend the config does not have are config errors."""

from __future__ import annotations

import pytest

from gateway.chains import plan_backend_chains
from gateway.config import load_config_text
from gateway.errors import ConfigError

CONFIG = """
server: {{public_url: "http://127.0.0.1:8000"}}
upstream: {{issuer: "http://127.0.0.1:9000", client_id: gw, client_secret: s}}
backends:
  partners:
    path: /partners/mcp
    url: http://127.0.0.1:8002/mcp
    auth: {{kind: static-key, header: X-Api-Key, value: k}}
stages:
  authorize:
{settings}
"""


def plan(settings: str) -> None:
    config = load_config_text(CONFIG.format(settings=settings), source="test.yaml")
    plan_backend_chains(config)


def test_policy_known_backend_accepted() -> None:
    """tool_scopes and require_verified_agent may name configured backends."""
    plan(
        "    tool_scopes: {partners: {get_partner: [partners:detail]}}\n"
        "    require_verified_agent: [partners]"
    )


@pytest.mark.parametrize(
    ("settings", "where"),
    [
        (
            "    tool_scopes: {partner: {get_partner: [partners:detail]}}",
            "stages.authorize.tool_scopes: unknown backend 'partner'",
        ),
        (
            "    require_verified_agent: [employes]",
            "stages.authorize.require_verified_agent: unknown backend 'employes'",
        ),
    ],
)
def test_policy_unknown_backend_rejected(settings: str, where: str) -> None:
    """A misspelt backend in a policy fails the check with its path."""
    with pytest.raises(ConfigError) as raised:
        plan(settings)
    assert any(problem.startswith(where) for problem in raised.value.problems)
    assert any("use one of: partners" in p for p in raised.value.problems)
