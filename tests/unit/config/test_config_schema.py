"""The published config JSON Schema: up to date, and valid for the shipped files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.config.schema import SCHEMA_PATH, render

SCHEMA_LINE = "# yaml-language-server: $schema=gateway.schema.json\n"
SHIPPED = [
    Path("config/gateway.yaml"),
    Path("src/gateway/demo/gateway.yaml"),
    Path("config/okta.example.yaml"),
]


def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(Path(SCHEMA_PATH).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors_of(document: Any) -> list[str]:
    return [
        f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in validator().iter_errors(document)
    ]


def demo() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SHIPPED[0].read_text())
    return loaded


def test_config_schema_file_is_current() -> None:
    """The committed schema equals what the config Structs generate."""
    assert Path(SCHEMA_PATH).read_text() == render(), (
        f"{SCHEMA_PATH} is stale; regenerate it with "
        f"`python -m gateway.config.schema > {SCHEMA_PATH}` (or `just schema`)"
    )


@pytest.mark.parametrize("path", SHIPPED, ids=str)
def test_shipped_config_valid_against_schema(path: Path) -> None:
    """Each shipped config file validates as written, ``${VAR}`` included."""
    assert errors_of(yaml.safe_load(path.read_text())) == []


@pytest.mark.parametrize("path", SHIPPED, ids=str)
def test_shipped_config_names_schema(path: Path) -> None:
    """Each shipped config file points yaml-language-server at the schema."""
    assert path.read_text().startswith(SCHEMA_LINE)


def test_demo_schema_link_reaches_schema() -> None:
    """The packaged demo's schema path resolves next to the file."""
    linked = Path("src/gateway/demo/gateway.schema.json")
    assert linked.read_text() == Path(SCHEMA_PATH).read_text()


def test_schema_rejects_misspelt_stage_setting() -> None:
    """A misspelt key in a built-in stage instance's settings is flagged."""
    document = demo()
    document["stages"]["authorize/strict"] = {"tool_scops": {}}
    assert errors_of(document) == [
        "stages.authorize/strict: Additional properties are not allowed "
        "('tool_scops' was unexpected)"
    ]


def test_schema_rejects_bad_chain_reference() -> None:
    """A chain entry with a bad instance name is flagged."""
    document = demo()
    document["pipeline"][3] = "authorize/strict!"
    [error] = errors_of(document)
    assert error.startswith("pipeline.3: 'authorize/strict!' is not valid")


def test_schema_accepts_plugin_and_class_path_settings() -> None:
    """Settings of stages the schema cannot know are any mapping."""
    document = demo()
    document["stages"]["change_freeze/reads"] = {"tools": ["list_*"]}
    document["stages"]["pkg.mod:Stage"] = {"anything": 1}
    assert errors_of(document) == []


def test_schema_accepts_env_reference_for_number() -> None:
    """A number written as a ``${VAR}`` reference is accepted, as the loader does."""
    document = demo()
    document["server"]["port"] = "${GATEWAY_PORT:-8000}"
    document["stages"]["audit"]["journal_max_pending"] = "${PENDING}"
    assert errors_of(document) == []


def test_schema_rejects_wrong_type_for_number() -> None:
    """A number written as plain text is flagged."""
    document = demo()
    document["server"]["port"] = "eighty"
    [error] = errors_of(document)
    assert error.startswith("server.port: 'eighty' is not valid")
