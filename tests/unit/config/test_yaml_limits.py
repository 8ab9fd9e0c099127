"""Config files within bounds: size, alias expansion, and values kept out of errors."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.chains import plan_backend_chains
from gateway.config import load_config, load_config_text
from gateway.config.yaml_safety import MAX_CONFIG_BYTES, MAX_YAML_VALUES, parse_yaml
from gateway.errors import ConfigError

DEMO = Path("config/gateway.yaml").read_text()


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, env={}, source="gateway.yaml")
    return info.value.problems


def test_load_config_oversized_file_rejected(tmp_path: Path) -> None:
    """A file over 1 MiB is refused with the limit, naming the file."""
    path = tmp_path / "gateway.yaml"
    path.write_text(DEMO + "#" + "x" * MAX_CONFIG_BYTES + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: the config file has ")
    assert f"the limit is {MAX_CONFIG_BYTES} bytes" in problem


def test_config_alias_bomb_rejected_quickly() -> None:
    """Aliases expanding to 9**9 values are refused before any is built."""
    text = "a: &a [x, x, x, x, x, x, x, x, x]\n"
    for level in range(8):
        name, previous = chr(98 + level), chr(97 + level)
        text += f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]\n"
    started = time.monotonic()
    (problem,) = problems(DEMO + text)
    assert time.monotonic() - started < 2
    assert problem.startswith("gateway.yaml: invalid YAML: ")
    assert f"more than {MAX_YAML_VALUES} values" in problem


def test_config_small_anchors_still_accepted() -> None:
    """Anchors and aliases that expand to a few values load as before."""
    data = parse_yaml("base: &tools [a, b]\nx: {allow: *tools}\ny: {allow: *tools}\n")
    assert data == {
        "base": ["a", "b"],
        "x": {"allow": ["a", "b"]},
        "y": {"allow": ["a", "b"]},
    }


def test_config_invalid_choice_lists_choices_not_value() -> None:
    """A value outside a fixed set names the valid ones, never itself."""
    text = DEMO.replace("algorithm: ES256", "algorithm: hunter2-value")
    assert text != DEMO
    (problem,) = problems(text)
    assert problem == "signing.algorithm: Invalid value; expected one of: ES256, RS256"


def test_stage_setting_invalid_choice_value_not_shown() -> None:
    """A stage setting outside its choices is reported without the value."""
    chain = "pipeline: [audit, authenticate, identify_agent, authorize, exchange,"
    text = DEMO.replace(chain, f"{chain} redact,") + (
        "  redact:\n    scan: [text, hunter2-value]\n"
    )
    with pytest.raises(ConfigError) as info:
        plan_backend_chains(load_config_text(text, env={}))
    found = info.value.problems
    assert (
        "stages.redact.scan[1]: Invalid value; expected one of: resource, "
        "structured, text"
    ) in found
    assert not [problem for problem in found if "hunter2" in problem]
