"""Rate limits for agents the config does not have are config errors."""

from __future__ import annotations

import pytest

from gateway.chains import plan_backend_chains
from gateway.config import load_config_text
from gateway.errors import ConfigError

CONFIG = """
server: {{public_url: "http://127.0.0.1:8000"}}
upstream: {{issuer: "http://127.0.0.1:9000", client_id: gw, client_secret: s}}
agents:
  cursor:
    match: {{client_name: cursor}}
    backends: [partners]
backends:
  partners:
    path: /partners/mcp
    url: http://127.0.0.1:8002/mcp
    auth: {{kind: static-key, header: X-Api-Key, value: k}}
pipeline: [audit, authenticate, identify_agent, authorize, {stage}, exchange, forward]
stages:
  {stage}:
    per_minute: 60
    burst: 10
    agents:
{agents}
"""


def plan(agents: str, stage: str = "rate_limit") -> None:
    text = CONFIG.format(agents=agents, stage=stage)
    plan_backend_chains(load_config_text(text, source="test.yaml"))


def test_rate_limit_known_agents_accepted() -> None:
    """Overrides may name configured agents and the default agent."""
    plan(
        "      cursor: {per_minute: 5, burst: 1}\n"
        "      default: {per_minute: 1, burst: 1}"
    )


@pytest.mark.parametrize("stage", ["rate_limit", "rate_limit/tools"])
def test_rate_limit_unknown_agent_rejected(stage: str) -> None:
    """A misspelt agent in an override fails the check with its path."""
    with pytest.raises(ConfigError) as raised:
        plan("      cursr: {per_minute: 5, burst: 1}", stage=stage)
    problems = raised.value.problems
    assert any(
        p.startswith(f"stages.{stage}.agents: unknown agent 'cursr'")
        and "use one of: anonymous, cursor, default" in p
        for p in problems
    ), problems
