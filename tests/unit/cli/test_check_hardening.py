"""``agent-proxy check`` and ``run``: no values in errors, broken stages, pipes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

from gateway.cli import main
from pipeline import BaseStage, Next

DEMO = Path("config/gateway.yaml").read_text()
PARTNERS_VALUE = "value: ${PARTNERS_API_KEY:-partners-dev-key}"
UPSTREAM_SECRET = (
    "client_secret: ${AGENT_PROXY_UPSTREAM_SECRET:-agent-proxy-dev-secret}"
)
CHAIN = "pipeline: [audit, authenticate, identify_agent, authorize, exchange, session"
HERE = "tests.unit.cli.test_check_hardening"


class RaisingStage(BaseStage[Any, Any]):
    """A custom stage whose constructor fails, quoting a credential."""

    def __init__(self, *, name: str, config: Any, resources: Any) -> None:
        msg = "cannot start: password=hunter2-secret"
        raise RuntimeError(msg)

    async def handle(self, ctx: Any, call_next: Next[Any, Any]) -> Any:
        return await call_next(ctx)


class NoArgumentsStage:
    """A stage class whose constructor takes none of name, config, resources."""

    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()
    terminal: ClassVar[bool] = False

    async def handle(self, ctx: Any, call_next: Next[Any, Any]) -> Any:
        return await call_next(ctx)


def write(tmp_path: Path, text: str, port: int = 8000) -> Path:
    path = tmp_path / "gateway.yaml"
    text = text.replace("var_dir: var", f"var_dir: {tmp_path / 'var'}")
    path.write_text(text.replace("8000", str(port)), encoding="utf-8")
    return path


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["check", "--config", str(path)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize(
    ("original", "written", "key"),
    [
        (PARTNERS_VALUE, "value: 98765432109876", "backends.partners.auth.value"),
        (UPSTREAM_SECRET, "client_secret: [98765432109876]", "upstream.client_secret"),
    ],
)
def test_check_wrong_type_secret_not_printed(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    original: str,
    written: str,
    key: str,
) -> None:
    """A secret written as a number or list is named by key, its value never shown."""
    assert original in DEMO
    code, output = check(write(tmp_path, DEMO.replace(original, written)), capsys)
    assert code == 1
    assert f"{key}: Expected `str`, got `" in output
    assert "98765432109876" not in output


def test_check_stage_without_constructor_arguments_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stage class that cannot take name, config, resources fails check."""
    text = DEMO.replace(CHAIN, f'{CHAIN}, "{HERE}:NoArgumentsStage"')
    code, output = check(write(tmp_path, text), capsys)
    assert code == 1
    assert (
        f"pipeline[6]: stage '{HERE}:NoArgumentsStage' cannot be built: its class "
        "must accept the keyword arguments name, config and resources"
    ) in output


def test_check_audit_sink_headers_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every audit webhook header value is masked, whatever the header's name."""
    sink = (
        "      - kind: webhook\n"
        "        url: http://127.0.0.1:9/events\n"
        "        secret: webhook-signing-secret-1234\n"
        "        headers: {X-Tenant-Auth: opaque-header-credential}\n"
    )
    code, output = check(write(tmp_path, DEMO + sink), capsys)
    assert code == 0, output
    assert '"headers":{"X-Tenant-Auth":"***"}' in output
    assert "opaque-header-credential" not in output


def test_check_redact_reports_every_bad_pattern(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each bad redact pattern is reported in one run, not only the first."""
    text = DEMO.replace(CHAIN, f"{CHAIN}, redact") + (
        "  redact:\n    patterns: {first: '(a+)+', second: '(?i)x', good: 'y+'}\n"
    )
    code, output = check(write(tmp_path, text), capsys)
    assert code == 1
    assert "patterns.first: the pattern nests one repeat" in output
    assert "patterns.second: the pattern sets a global inline flag" in output
    assert "patterns.good" not in output


def test_check_closed_stdout_exits_without_traceback(tmp_path: Path) -> None:
    """check writing into a closed pipe (as with ``| head``) exits quietly."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "check",
                "--config",
                "config/gateway.yaml",
            ],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "BrokenPipeError" not in result.stderr


def test_run_stage_constructor_error_exits_like_config_error(tmp_path: Path) -> None:
    """run with a stage whose constructor raises exits 1 with a redacted message."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    text = DEMO.replace(CHAIN, f'{CHAIN}, "{HERE}:RaisingStage"')
    path = write(tmp_path, text, port)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "Traceback" not in output
    assert "hunter2" not in output
    assert (
        f"pipeline[6]: stage '{HERE}:RaisingStage' failed to start: RuntimeError: "
        "cannot start: password="
    ) in result.stderr
