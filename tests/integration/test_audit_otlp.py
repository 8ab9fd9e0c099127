"""The otlp audit sink against a real OTLP/HTTP receiver decoding protobuf."""

from __future__ import annotations

import calendar
from datetime import datetime
from pathlib import Path

import anyio
import httpx
import pytest
from _audit_support import audit_demo, jsonl_events, otlp_logs_receiver
from _case_support import open_session, sign_in, tools_call
from _otlp_receiver import installed_provider
from opentelemetry.sdk.trace import TracerProvider

pytestmark = pytest.mark.anyio


async def test_otlp_sink_sends_events_as_log_records(tmp_path: Path) -> None:
    """Every event arrives once as a log record joined to its trace, after a failure."""
    with (
        installed_provider(TracerProvider()),
        otlp_logs_receiver(fail_first=1) as receiver,
    ):
        audit = {
            "sinks": [
                {"kind": "jsonl"},
                {
                    "kind": "otlp",
                    "endpoint": receiver.endpoint,
                    "max_wait": 0.02,
                    "timeout": 2.0,
                    "retry_initial": 0.05,
                    "retry_max": 0.2,
                },
            ]
        }
        async with (
            audit_demo(tmp_path / "var", audit) as stack,
            httpx.AsyncClient(timeout=10.0) as client,
        ):
            storage = await sign_in(stack, "employees", client_name="claude-code")
            assert storage.tokens is not None
            url = stack.mcp_url("employees")
            headers = await open_session(
                client, url, authorization=f"Bearer {storage.tokens.access_token}"
            )
            for n, tool in enumerate(["list_employees", "update_salary"]):
                response = await client.post(
                    url, json=tools_call(n, tool), headers=headers
                )
                assert response.status_code == 200, response.text
            bus = stack.gateway.runtime.bus
            with anyio.fail_after(15):
                while any(bus.pending().values()):
                    await anyio.sleep(0.05)
            failures = bus.stats()["audit.otlp.1"]["failures"]
        lines = stack.audit_path.read_bytes().splitlines()
        events = jsonl_events(stack.audit_path)
        logs = list(receiver.logs)

    assert failures == 1
    assert [log.attributes["id"] for log in logs] == [e["id"] for e in events]
    assert [log.body.encode() for log in logs] == lines
    for log, event in zip(logs, events, strict=True):
        assert log.event_name == f"agent_proxy.audit.{event['type']}"
        assert log.attributes["type"] == event["type"]
        assert log.attributes["outcome"] == event["outcome"]
        assert log.trace_id == (event["trace_id"] or "")
        assert log.span_id == (event["span_id"] or "")
        moment = datetime.fromisoformat(event["time"])
        seconds = calendar.timegm(moment.utctimetuple())
        assert log.time_unix_nano == seconds * 10**9 + moment.microsecond * 1000
        assert log.service == "agent-proxy"
        assert log.scope == "gateway.audit"
        for key in ("reason", "backend", "tool", "prev_hash"):
            if event[key] is None:
                assert key not in log.attributes
            else:
                assert log.attributes[key] == event[key]

    denied = [log for log in logs if log.event_name.endswith(".AccessDenied")]
    assert len(denied) == 1
    assert denied[0].severity_text == "WARN"
    assert denied[0].attributes["user.sub"] == "00u_alice"
    assert denied[0].attributes["agent.id"] == "claude-code"
    assert denied[0].attributes["agent.verified"] is False
    assert denied[0].attributes["tool"] == "update_salary"
    granted = [log for log in logs if log.event_name.endswith(".AccessGranted")]
    assert granted
    assert {log.severity_text for log in granted} == {"INFO"}
    for log in granted:
        assert len(log.trace_id) == 32
        assert len(log.span_id) == 16
