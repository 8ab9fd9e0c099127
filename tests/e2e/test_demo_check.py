"""The demo self-check, as a user runs it: a separate process on free ports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

pytestmark = pytest.mark.e2e

COMMON_FIELDS = ("request_id", "trace_id", "user", "agent", "backend", "method", "tool")


def run_demo_check(var_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "demo",
            "--check",
            "--ephemeral-ports",
            "--var-dir",
            str(var_dir),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture(scope="module")
def demo_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    var_dir = tmp_path_factory.mktemp("demo-var")
    return run_demo_check(var_dir), var_dir


def test_demo_check_exits_zero(
    demo_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """``agent-proxy demo --check`` passes every step and exits 0."""
    result, _ = demo_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo check passed" in result.stdout
    assert result.stdout.count("PASS") == 6
    assert "FAIL" not in result.stdout


def test_demo_check_audit_events_carry_context(
    demo_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """Every chain event carries the request and trace ids and the known fields."""
    _, var_dir = demo_run
    lines = (var_dir / "audit.jsonl").read_bytes().splitlines()
    events = [msgspec.json.decode(line) for line in lines if line]
    chain_events = [
        e
        for e in events
        if e.get("stage")
        in {
            "audit",
            "authenticate",
            "identify_agent",
            "authorize",
            "exchange",
            "session",
        }
    ]
    assert chain_events
    for event in chain_events:
        for name in COMMON_FIELDS:
            assert name in event, (name, event["type"])
        assert event["request_id"]
        assert event["trace_id"] is None or len(event["trace_id"]) == 32
    calls = [
        e
        for e in chain_events
        if e["type"] == "ResponseCompleted" and e["method"] == "tools/call"
    ]
    assert calls
    for call in calls:
        request = [e for e in events if e.get("request_id") == call["request_id"]]
        types = {e["type"] for e in request}
        assert "RequestAuthenticated" in types
        assert "AgentIdentified" in types
        assert types & {"AccessGranted", "AccessDenied"}
        if "AccessGranted" in types:
            assert "TokenExchanged" in types
            if call.get("protocol_version") != "2026-07-28":
                assert types & {"SessionResumed", "SessionCreated"}
        assert call["user"]["sub"]
        assert call["agent"]["id"] in {"cursor", "claude-code"}
        assert call["tool"]


def test_demo_check_exchange_cache_visible(
    demo_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """ID-JAG exchanges show a miss first and hits after it."""
    _, var_dir = demo_run
    events = [
        msgspec.json.decode(line)
        for line in (var_dir / "audit.jsonl").read_bytes().splitlines()
        if line
    ]
    exchanges = [
        e
        for e in events
        if e["type"] == "TokenExchanged" and e["auth_kind"] == "id-jag"
    ]
    caches = [e["cache"] for e in exchanges]
    assert "miss" in caches
    assert "hit" in caches


def test_demo_check_audit_holds_no_token(
    demo_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """No JWT (ID token, ID-JAG, access token) appears in the audit file or output."""
    result, var_dir = demo_run
    assert b"eyJ" not in (var_dir / "audit.jsonl").read_bytes()
    assert "eyJ" not in result.stdout
    assert "eyJ" not in result.stderr
