"""``agent-proxy check`` and start-up reject invalid chains with clear messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.app import open_gateway
from gateway.cli import main
from gateway.config import load_config
from gateway.errors import ConfigError

DEMO = Path("config/gateway.yaml").read_text()
DEFAULT_CHAIN = (
    "pipeline: [audit, authenticate, identify_agent, authorize, exchange, session, "
    "forward]"
)


def write_config(tmp_path: Path, pipeline: str, extra: str = "") -> Path:
    assert DEFAULT_CHAIN in DEMO
    text = DEMO.replace(DEFAULT_CHAIN, pipeline) + extra
    path = tmp_path / "gateway.yaml"
    path.write_text(text.replace("var_dir: var", f"var_dir: {tmp_path / 'var'}"))
    return path


def run_check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["check", "--config", str(path)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_check_demo_config_prints_chains(capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped config is valid and each backend's chain is printed."""
    code, output = run_check(Path("config/gateway.yaml"), capsys)
    assert code == 0
    assert "backend employees (pipeline, the default chain):" in output
    assert "backend partners (pipeline, the default chain):" in output
    assert "7. forward (terminal)" in output
    assert "requires: backend_credentials, decision, principal" in output


def test_check_exchange_before_authenticate_names_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exchange placed before authenticate is rejected naming both stages."""
    path = write_config(
        tmp_path,
        "pipeline: [audit, exchange, authenticate, identify_agent, authorize, "
        "session, forward]",
    )
    code, output = run_check(path, capsys)
    assert code == 1
    assert (
        'pipeline[1]: stage "exchange" requires "principal", which no stage before '
        'it provides; put "authenticate" before it'
    ) in output


def test_check_unknown_stage_lists_known(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown stage name is rejected with the list of known stages."""
    path = write_config(
        tmp_path,
        "pipeline: [audit, authenticate, identify_agent, authorise, exchange, "
        "session, forward]",
    )
    code, output = run_check(path, capsys)
    assert code == 1
    assert "pipeline[3]: unknown stage 'authorise'; known stages: audit, " in output
    for name in ("authenticate", "authorize", "exchange", "forward", "session"):
        assert name in output.split("known stages:")[1]


def test_check_forward_without_authenticate_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Dropping authenticate leaves forward without a principal: rejected."""
    path = write_config(
        tmp_path,
        "pipeline: [audit, identify_agent, authorize, exchange, session, forward]",
    )
    code, output = run_check(path, capsys)
    assert code == 1
    assert 'stage "forward" requires "principal"' in output
    assert 'add "authenticate" before it' in output


def test_check_lists_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Several problems are printed together with a count."""
    path = write_config(tmp_path, "pipeline: [audit, nope, forward, forward]")
    code, output = run_check(path, capsys)
    assert code == 1
    assert "invalid configuration (" in output
    assert "unknown stage 'nope'" in output
    assert "appears twice" in output
    assert 'requires "principal"' in output


def test_check_per_backend_chain_validated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A backend's own pipeline is validated under its own YAML path."""
    text = (
        write_config(tmp_path, DEFAULT_CHAIN)
        .read_text()
        .replace(
            "    path: /partners/mcp\n",
            "    path: /partners/mcp\n    pipeline: [audit, session, forward]\n",
        )
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    code, output = run_check(path, capsys)
    assert code == 1
    assert 'backends.partners.pipeline[1]: stage "session" requires' in output


def test_check_custom_stage_reference_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``module:Class`` stage is resolved and shown in its place."""
    ref = "examples.stages.require_tenant_header:RequireTenantHeaderStage"
    path = write_config(
        tmp_path,
        f'pipeline: [audit, authenticate, "{ref}", identify_agent, authorize, '
        "exchange, session, forward]",
    )
    code, output = run_check(path, capsys)
    assert code == 0, output
    assert f"3. {ref}" in output


@pytest.mark.anyio
async def test_startup_rejects_invalid_chain(tmp_path: Path) -> None:
    """Start-up raises ConfigError with the same messages as check."""
    path = write_config(
        tmp_path,
        "pipeline: [audit, exchange, authenticate, identify_agent, authorize, "
        "session, forward]",
    )
    with pytest.raises(ConfigError) as info:
        async with open_gateway(load_config(path)):
            pass
    assert any('put "authenticate" before it' in p for p in info.value.problems)


def test_run_command_invalid_chain_exits_1_without_traceback(tmp_path: Path) -> None:
    """``agent-proxy run`` prints the problems and exits 1, no traceback."""
    path = write_config(tmp_path, "pipeline: [audit, nope, forward]")
    # The port is never bound, because the chain is checked first; it is
    # changed anyway so that a demo running on 8000 cannot hide the check.
    path.write_text(path.read_text().replace("port: 8000", "port: 1"))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "unknown stage 'nope'" in result.stderr
    assert "Traceback" not in result.stderr
