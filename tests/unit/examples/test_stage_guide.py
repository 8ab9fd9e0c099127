"""The output and messages that docs/writing-a-stage.md quotes are real.

Each test finds a block of the guide by a line it contains, produces the
same thing with the gateway, and compares them, so the guide cannot drift
from the code.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

from gateway.chains import plan_backend_chains
from gateway.cli import main
from gateway.config import load_config_text
from gateway.errors import ConfigError
from tests.fixtures.dist_info import (
    EXAMPLE_PACKAGE,
    install_example_package,
    write_dist_info,
)

GUIDE = Path("docs/writing-a-stage.md").read_text()
DEMO = Path("config/gateway.yaml").read_text()
DEFAULT_CHAIN = (
    "pipeline: [audit, authenticate, identify_agent, authorize, exchange, session, "
    "forward]"
)


def block(language: str, containing: str) -> str:
    """Return the fenced block of ``language`` that contains ``containing``."""
    blocks = re.findall(rf"```{language}\n(.*?)```", GUIDE, flags=re.DOTALL)
    [found] = [b for b in blocks if containing in b]
    return str(found)


def demo_with(guide_yaml: str, tmp_path: Path) -> Path:
    """Write the demo config with the chains and stages of a guide YAML block."""
    config = yaml.safe_load(DEMO)
    extra = yaml.safe_load(guide_yaml)
    config["server"]["var_dir"] = str(tmp_path / "var")
    config["pipeline"] = extra["pipeline"]
    for name, backend in extra.get("backends", {}).items():
        config["backends"][name].update(backend)
    config["stages"].update(extra["stages"])
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def check_output(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    code = main(["check", "--config", str(path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def shown_lines(text_block: str) -> list[str]:
    return [line for line in text_block.splitlines() if line.strip() != "..."]


def test_guide_check_output_of_example_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The check output quoted for the example stage is what check prints."""
    path = demo_with(block("yaml", "allowed: [acme, globex]"), tmp_path)
    output = check_output(path, capsys).splitlines()
    for line in shown_lines(block("text", "  3. examples.stages")):
        assert line in output


def test_guide_entry_point_table_is_package_table() -> None:
    """The entry-point table quoted is the example package's own."""
    quoted = block("toml", "agent_proxy.stages")
    assert quoted in (EXAMPLE_PACKAGE / "pyproject.toml").read_text()


def test_guide_check_output_of_plugin_instances(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check output quoted for the plug-in's instances is what check prints."""
    install_example_package(tmp_path / "site", monkeypatch)
    path = demo_with(block("yaml", "change_freeze/reads"), tmp_path)
    output = check_output(path, capsys).splitlines()
    for line in shown_lines(block("text", "5. change_freeze/reads")):
        assert line in output


def test_guide_broken_plugin_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The message quoted for a plug-in that fails to load is the real one."""
    write_dist_info(
        tmp_path,
        "agent-proxy-change-freeze",
        "0.1.0",
        {
            "agent_proxy.stages": {
                "change_freeze": "agent_proxy_change_freeze:ChangeFreezeStage"
            }
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "agent_proxy_change_freeze", raising=False)
    text = DEMO.replace(
        DEFAULT_CHAIN,
        "pipeline: [audit, authenticate, identify_agent, authorize, change_freeze, "
        "exchange, session, forward]",
    )
    with pytest.raises(ConfigError) as raised:
        plan_backend_chains(load_config_text(text))
    quoted = block("text", "cannot load stage entry point").strip()
    assert raised.value.problems == [quoted]


def test_guide_ordering_message(tmp_path: Path) -> None:
    """The message quoted for a broken ordering constraint is the real one."""
    ref = "examples.stages.require_tenant_header:RequireTenantHeaderStage"
    text = DEMO.replace(
        DEFAULT_CHAIN,
        "pipeline: [audit, authenticate, identify_agent, authorize, exchange, "
        f'"{ref}", session, forward]',
    )
    with pytest.raises(ConfigError) as raised:
        plan_backend_chains(load_config_text(text))
    quoted = block("text", "because its class declares before").strip()
    assert raised.value.problems == [quoted]
