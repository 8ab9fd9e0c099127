"""What a config reload changes, and the settings it cannot change live.

Most settings are read per request and apply on reload. The settings in
:data:`RESTART_ONLY` are used once at start-up: to bind the listening socket
and the admin socket, and to build the upstream OIDC clients, the signing
keys, the OAuth rate limiter, the pre-registered clients, the client
metadata document fetcher and telemetry. A reload keeps their running values
and reports the changed key paths instead. The audit sink settings are
reported the same way, because the sinks are subscribed once at start-up.

Summaries name key paths, backends and agents, never values, so that no
secret reaches a log line or an event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import msgspec

from gateway.app import audit_config
from gateway.chains import audit_settings_key
from gateway.config import GatewayConfig

__all__ = [
    "RESTART_ONLY",
    "ConfigChanges",
    "changed_paths",
    "compare_configs",
    "keep_restart_only",
    "restart_required",
]

RESTART_ONLY: tuple[str, ...] = (
    "server.host",
    "server.port",
    "server.public_url",
    "server.var_dir",
    "server.admin_socket",
    "server.header_timeout",
    "upstream",
    "agents.*.upstream",
    "signing",
    "oauth.rate_limits",
    "oauth.clients",
    "oauth.client_metadata.allow_loopback",
    "telemetry.service_name",
    "telemetry.tracing",
    "telemetry.metrics",
    "telemetry.health",
)
"""Key paths that apply only at start-up; ``*`` stands for any agent name."""

_MISSING: Any = object()


@dataclass(frozen=True)
class ConfigChanges:
    """The differences between the running config and a reloaded one.

    Attributes:
        backends_added: Backends only the new config has.
        backends_removed: Backends only the running config has.
        backends_changed: Backends in both whose settings differ.
        chains_changed: Backends in both whose resolved chain differs.
        agents_changed: Agents added, removed or changed, and
            ``default_agent`` when its policy differs.
        changed: Every key path that differs and applies live.
        restart_required: Key paths that differ but apply only after a restart.
    """

    backends_added: list[str]
    backends_removed: list[str]
    backends_changed: list[str]
    chains_changed: list[str]
    agents_changed: list[str]
    changed: list[str]
    restart_required: list[str]

    def as_fields(self) -> dict[str, list[str]]:
        """Return the lists by name, as the event and the log line carry them."""
        return asdict(self)


def changed_paths(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Return the dotted key paths where two builtins trees differ.

    A mapping is compared key by key; any other value, lists included, is
    compared whole and reported at its own path. A key present on one side
    only is reported once, at its own path.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        paths: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                paths.append(path)
            else:
                paths.extend(changed_paths(old[key], new[key], path))
        return paths
    return [] if old == new else [prefix or "<root>"]


def restart_required(running: GatewayConfig, new: GatewayConfig) -> list[str]:
    """Return the key paths of restart-only settings that ``new`` changes.

    ``running`` is the config the process started with, so a change stays
    reported on every reload until a restart applies it.
    """
    running_tree = msgspec.to_builtins(running)
    new_tree = msgspec.to_builtins(new)
    paths: list[str] = []
    for pattern in RESTART_ONLY:
        for parts in _expand(pattern.split("."), new_tree):
            before = _running_value(running_tree, parts)
            paths.extend(changed_paths(before, _get(new_tree, parts), ".".join(parts)))
    running_audit = msgspec.to_builtins(audit_config(running))
    new_audit = msgspec.to_builtins(audit_config(new))
    key = audit_settings_key(new) or audit_settings_key(running) or "audit"
    paths.extend(changed_paths(running_audit, new_audit, f"stages.{key}"))
    return paths


def keep_restart_only(running: GatewayConfig, new: GatewayConfig) -> GatewayConfig:
    """Return ``new`` with every restart-only setting as ``running`` has it.

    The audit settings (sinks and journals) are kept as ``running`` has
    them, under the key that ``new`` puts them: the sinks keep running as
    they started, and a change to them alone leaves every chain as it is. An
    agent that is new gets no upstream client of its own until a restart.
    """
    running_tree = msgspec.to_builtins(running)
    new_tree = msgspec.to_builtins(new)
    for pattern in RESTART_ONLY:
        for parts in _expand(pattern.split("."), new_tree):
            _set(new_tree, parts, _running_value(running_tree, parts))
    running_key = audit_settings_key(running)
    new_key = audit_settings_key(new)
    if new_key is None and running_key in _chain_refs(new):
        new_key = running_key
    if new_key is not None and audit_config(running) != audit_config(new):
        settings = running_tree["stages"].get(running_key) if running_key else None
        new_tree["stages"][new_key] = settings or {}
    return msgspec.convert(new_tree, GatewayConfig)


def compare_configs(
    old: GatewayConfig,
    new: GatewayConfig,
    *,
    old_chains: Mapping[str, Any],
    new_chains: Mapping[str, Any],
    restart_required: list[str],
) -> ConfigChanges:
    """Summarise what changes from ``old`` to ``new``, both as they run.

    Args:
        old: The config serving now, with restart-only settings kept.
        new: The config about to serve, with restart-only settings kept.
        old_chains: The chain signature per backend of ``old``.
        new_chains: The chain signature per backend of ``new``.
        restart_required: The restart-only changes, reported as given.
    """
    kept = sorted(set(old.backends) & set(new.backends))
    agent_names = sorted(set(old.agents) | set(new.agents))
    agents_changed = [
        name for name in agent_names if old.agents.get(name) != new.agents.get(name)
    ]
    if old.default_agent != new.default_agent:
        agents_changed.append("default_agent")
    return ConfigChanges(
        backends_added=sorted(set(new.backends) - set(old.backends)),
        backends_removed=sorted(set(old.backends) - set(new.backends)),
        backends_changed=[
            name for name in kept if old.backends[name] != new.backends[name]
        ],
        chains_changed=[
            name for name in kept if old_chains.get(name) != new_chains.get(name)
        ],
        agents_changed=agents_changed,
        changed=changed_paths(msgspec.to_builtins(old), msgspec.to_builtins(new)),
        restart_required=list(restart_required),
    )


def _chain_refs(config: GatewayConfig) -> set[str]:
    """Return every stage reference that some chain of ``config`` uses."""
    refs = set(config.pipeline)
    for backend in config.backends.values():
        refs.update(backend.pipeline or ())
    return refs


def _expand(parts: list[str], tree: Any) -> list[list[str]]:
    """Return the concrete paths of a pattern, with ``*`` over ``tree``'s keys."""
    paths: list[list[str]] = [[]]
    for part in parts:
        expanded: list[list[str]] = []
        for path in paths:
            if part != "*":
                expanded.append([*path, part])
                continue
            node = _get(tree, path)
            if isinstance(node, dict):
                expanded.extend([*path, str(key)] for key in node)
        paths = expanded
    return paths


def _running_value(tree: Any, parts: list[str]) -> Any:
    """Return the running value at ``parts``, or null where it has none.

    Only ``agents.*.upstream`` of an agent that the running config lacks can
    be missing, and its default is null.
    """
    value = _get(tree, parts)
    return None if value is _MISSING else value


def _get(tree: Any, parts: list[str]) -> Any:
    node = tree
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _set(tree: Any, parts: list[str], value: Any) -> None:
    node = tree
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value
