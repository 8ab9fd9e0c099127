"""The JSON Schema of the config file, generated from the config Structs.

Run ``python -m gateway.config.schema > config/gateway.schema.json`` (or
``just schema``) after changing a config Struct or adding a built-in stage;
a test fails while the file is stale. Editors that run yaml-language-server
validate a config file that starts with
``# yaml-language-server: $schema=gateway.schema.json``.

msgspec generates the shape of :class:`GatewayConfig`. This module adds what
the Struct does not state:

- ``stages`` maps each built-in stage reference, ``<type>`` or
  ``<type>/<instance>``, to that stage's own settings Struct; any other key
  (a plug-in or ``module.path:Class`` stage) may hold any mapping;
- chain entries must be well-formed stage references;
- a number, a boolean, a choice from a list or a constrained string may
  also be written as a ``${VAR}`` reference, which the loader replaces with
  the variable's value before it checks the type.

The schema checks the file as written, before ``${VAR}`` references are
replaced, so ``agent-proxy check`` remains the full validation.
"""

from __future__ import annotations

import sys
from typing import Any

import msgspec

from gateway.config.model import GatewayConfig
from pipeline.registry import IMPORT_PATH, INSTANCE_NAME, TYPE_NAME

SCHEMA_PATH = "config/gateway.schema.json"
SCHEMA_ID = "urn:okta-agent-proxy:gateway-config"

ENV_REFERENCE = r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}"
"""A ``${VAR}`` or ``${VAR:-default}`` reference anywhere in a string."""

_INSTANCE = f"(/{INSTANCE_NAME.pattern})?"
STAGE_REFERENCE = f"^({TYPE_NAME.pattern}|{IMPORT_PATH.pattern}){_INSTANCE}$"
"""A chain entry: a type name or ``module.path:Class``, then ``/instance``."""

_ENV_STRING = {
    "type": "string",
    "pattern": ENV_REFERENCE,
    "description": "A ${VAR} reference, replaced by the variable's value.",
}
_CONSTRAINED_STRING = ("minLength", "maxLength", "pattern", "format")


def stage_config_types() -> dict[str, type[Any]]:
    """Return the settings type of each built-in stage, by stage type name."""
    from gateway.stages import builtin_registry
    from pipeline.stage import NoConfig

    return {
        name: getattr(cls, "Config", NoConfig)
        for name, cls in sorted(builtin_registry().items())
    }


def config_schema() -> dict[str, Any]:
    """Return the JSON Schema (2020-12) of a gateway config file."""
    stage_types = stage_config_types()
    configs = list(dict.fromkeys(stage_types.values()))
    (root, *stage_refs), components = msgspec.json.schema_components(
        [GatewayConfig, *configs], ref_template="#/$defs/{name}"
    )
    by_config = dict(zip(configs, stage_refs, strict=True))

    gateway = components["GatewayConfig"]
    gateway["properties"]["stages"] = {
        "type": "object",
        "description": "Settings per stage reference, as written in a chain. "
        "A built-in stage's settings are checked against its own Struct; a "
        "plug-in or module.path:Class stage may have any mapping, which "
        "agent-proxy check validates.",
        "patternProperties": {
            f"^{name}{_INSTANCE}$": by_config[config]
            for name, config in stage_types.items()
        },
        "additionalProperties": {"type": "object"},
    }
    _constrain_chain(gateway["properties"]["pipeline"])
    _constrain_chain(components["BackendConfig"]["properties"]["pipeline"])

    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "Okta Agent Proxy gateway configuration",
        "description": "The YAML file that agent-proxy run and agent-proxy check "
        "read. Generated from the config Structs; see docs/configuration.md.",
        **root,
        "$defs": components,
    }
    completed: dict[str, Any] = _allow_env_references(schema)
    return completed


def _constrain_chain(node: dict[str, Any]) -> None:
    """Require every item of a chain (or of an optional chain) to be a reference."""
    for branch in [node, *node.get("anyOf", [])]:
        if branch.get("type") == "array":
            branch["items"] = {"type": "string", "pattern": STAGE_REFERENCE}


def _allow_env_references(node: Any) -> Any:
    if isinstance(node, list):
        return [_allow_env_references(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _allow_env_references(value) for key, value in node.items()}
    kind = node.get("type")
    constrained = kind == "string" and any(k in node for k in _CONSTRAINED_STRING)
    if kind in ("integer", "number", "boolean") or "enum" in node or constrained:
        return {"anyOf": [node, _ENV_STRING]}
    return node


def render() -> str:
    """Return the schema as the text stored in ``config/gateway.schema.json``."""
    encoded = msgspec.json.encode(config_schema())
    return msgspec.json.format(encoded, indent=2).decode() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
