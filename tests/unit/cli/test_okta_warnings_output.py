"""``agent-proxy check`` prints Okta warnings; ``run`` logs them at start-up."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from gateway.cli import main

EXAMPLE = Path("config/okta.example.yaml").read_text()
ENV = {
    "OKTA_CLIENT_ID": "0oa-gateway",
    "OKTA_CLIENT_SECRET": "upstream-secret",
    "TICKETS_CLIENT_ID": "0oa-tickets",
    "TICKETS_CLIENT_SECRET": "tickets-secret",
    "WIKI_API_KEY": "wiki-key",
}
ORG_ISSUER = "  issuer: https://example.okta.com\n"
CUSTOM_ISSUER = "  issuer: https://example.okta.com/oauth2/default\n"


@pytest.fixture(autouse=True)
def okta_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


def write_example(tmp_path: Path, *replacements: tuple[str, str]) -> Path:
    text = EXAMPLE.replace("var_dir: /var/lib/agent-proxy", f"var_dir: {tmp_path}")
    for old, new in replacements:
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "okta.yaml"
    path.write_text(text)
    return path


def run_check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["check", "--config", str(path)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_check_okta_example_valid_without_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Okta example passes check with placeholder env vars and no warning."""
    code, output = run_check(write_example(tmp_path), capsys)
    assert code == 0
    assert "okta.yaml: valid" in output
    assert "warning:" not in output


def test_check_custom_upstream_warns_exit_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A custom upstream server is printed as a warning and check still exits 0."""
    path = write_example(tmp_path, (ORG_ISSUER, CUSTOM_ISSUER))
    code, output = run_check(path, capsys)
    assert code == 0
    assert "okta.yaml: valid" in output
    assert (
        "warning: upstream.issuer: 'https://example.okta.com/oauth2/default' is an "
        "Okta custom authorization server"
    ) in output
    assert "set upstream.issuer to 'https://example.okta.com'" in output


def test_check_inline_secret_warning_hides_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An inline secret is named by key in the output, never printed."""
    path = write_example(
        tmp_path,
        ("client_secret: ${OKTA_CLIENT_SECRET}", "client_secret: hunter2-inline"),
    )
    code, output = run_check(path, capsys)
    assert code == 0
    assert "warning: upstream.client_secret: the secret is written" in output
    assert "hunter2-inline" not in output


def test_check_error_with_warning_exits_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid config still fails even when Okta warnings would apply."""
    path = write_example(
        tmp_path,
        (ORG_ISSUER, CUSTOM_ISSUER),
        ("pipeline: [audit, authenticate,", "pipeline: [audit, authentcate,"),
    )
    code, output = run_check(path, capsys)
    assert code == 1
    assert "unknown stage 'authentcate'" in output


def test_run_startup_logs_config_warning(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``run`` logs each warning as config.warning before it binds its port.

    The port is held by a socket of the test, so ``run`` stops right after the
    warnings with "cannot listen" instead of serving.
    """
    # run installs a global tracer provider unless the SDK is disabled, and
    # that provider would change the trace ids other tests expect.
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        path = write_example(
            tmp_path,
            (ORG_ISSUER, CUSTOM_ISSUER),
            ("host: 0.0.0.0\n  port: 8000", f"host: 127.0.0.1\n  port: {port}"),
        )
        code = main(["--log-format", "json", "run", "--config", str(path)])
    captured = capsys.readouterr()
    assert code == 1
    assert "cannot listen" in captured.err
    events = [
        json.loads(line)
        for line in captured.out.splitlines() + captured.err.splitlines()
        if line.startswith("{")
    ]
    warnings = [event for event in events if event.get("event") == "config.warning"]
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning"
    assert warnings[0]["code"] == "okta_custom_server_for_id_jag"
    assert warnings[0]["key"] == "upstream.issuer"
    assert "set upstream.issuer" in warnings[0]["detail"]
