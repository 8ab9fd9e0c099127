"""Summaries of a config reload and the settings that wait for a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.config import GatewayConfig, load_config_text
from gateway.config_changes import (
    changed_paths,
    compare_configs,
    keep_restart_only,
    restart_required,
)
from gateway.demo.runner import DEMO_PORTS, demo_config

URLS = {name: f"http://127.0.0.1:{port}" for name, port in DEMO_PORTS.items()}


@pytest.fixture
def running() -> GatewayConfig:
    """The demo config, as a gateway would run it."""
    return demo_config(URLS, Path("var"))


def edited(config: GatewayConfig, change: Any) -> GatewayConfig:
    """Return ``config`` after ``change`` edited its builtins tree."""
    tree = msgspec.to_builtins(config)
    change(tree)
    return load_config_text(msgspec.json.encode(tree).decode())


def test_changed_paths_nested_values_named_by_path() -> None:
    """Mappings are compared key by key, lists and scalars whole."""
    old = {"a": {"b": 1, "c": [1]}, "e": {"f": 1}}
    new = {"a": {"b": 2, "c": [1, 2]}, "d": 1, "e": {"f": 1}}
    assert changed_paths(old, new) == ["a.b", "a.c", "d"]
    assert changed_paths(old, old) == []


def test_restart_required_port_and_signing_reported(running: GatewayConfig) -> None:
    """A new port and a new token lifetime are restart-only."""

    def change(tree: dict[str, Any]) -> None:
        tree["server"]["port"] = 8100
        tree["signing"]["access_token_ttl"] = 60
        tree["server"]["max_body_bytes"] = 2048

    new = edited(running, change)
    assert restart_required(running, new) == [
        "server.port",
        "signing.access_token_ttl",
    ]


def test_restart_required_new_agent_upstream_reported(
    running: GatewayConfig,
) -> None:
    """An agent's own upstream client is built at start-up only."""

    def change(tree: dict[str, Any]) -> None:
        tree["agents"]["bot"] = {
            "match": {"client_name": "bot"},
            "upstream": {"client_id": "bot-at-idp", "client_secret": "s" * 40},
        }
        tree["agents"]["plain"] = {"match": {"client_name": "plain"}}

    assert restart_required(running, edited(running, change)) == ["agents.bot.upstream"]


def test_restart_required_audit_sinks_reported(running: GatewayConfig) -> None:
    """The audit sinks are subscribed once, so their settings wait too."""

    def change(tree: dict[str, Any]) -> None:
        tree["stages"]["audit"]["sinks"][0]["path"] = "other.jsonl"

    assert restart_required(running, edited(running, change)) == ["stages.audit.sinks"]


def test_keep_restart_only_keeps_running_values(running: GatewayConfig) -> None:
    """Restart-only settings keep their running values; the rest is new."""

    def change(tree: dict[str, Any]) -> None:
        tree["server"]["port"] = 8100
        tree["server"]["max_body_bytes"] = 2048
        tree["upstream"]["client_secret"] = "rotated-secret-value-000000000000"
        tree["agents"]["cursor"]["upstream"]["client_secret"] = "x" * 40
        tree["agents"]["bot"] = {
            "upstream": {"client_id": "bot-at-idp", "client_secret": "s" * 40}
        }

    effective = keep_restart_only(running, edited(running, change))
    assert effective.server.port == running.server.port
    assert effective.server.max_body_bytes == 2048
    assert effective.upstream == running.upstream
    assert effective.agents["cursor"].upstream == running.agents["cursor"].upstream
    assert effective.agents["bot"].upstream is None
    assert "bot" in effective.agents


def test_compare_configs_names_backends_agents_and_paths(
    running: GatewayConfig,
) -> None:
    """Backends added, removed and changed, and agents changed, are listed."""

    def change(tree: dict[str, Any]) -> None:
        tree["backends"]["partners"]["auth"]["value"] = "new-partners-secret-0000"
        tree["backends"]["extra"] = {"path": "/extra/mcp", "url": URLS["partners"]}
        del tree["backends"]["employees"]
        for agent in tree["agents"].values():
            agent["backends"] = [b for b in agent["backends"] if b != "employees"]
            agent["tools"].pop("employees", None)
        tree["default_agent"]["backends"] = ["extra"]

    new = edited(running, change)
    changes = compare_configs(
        running,
        new,
        old_chains={"partners": 1, "employees": 1},
        new_chains={"partners": 2, "extra": 1},
        restart_required=[],
    )
    assert changes.backends_added == ["extra"]
    assert changes.backends_removed == ["employees"]
    assert changes.backends_changed == ["partners"]
    assert changes.chains_changed == ["partners"]
    assert changes.agents_changed == [
        "claude-code",
        "cursor",
        "inspector",
        "default_agent",
    ]
    assert "backends.partners.auth.value" in changes.changed
    assert "new-partners-secret-0000" not in repr(changes.as_fields())
