"""The canonical log line: one ``request.completed`` per request, joined to audit.

It reads the logs and audit file of the ``observed_run`` fixture, a full demo
run with every span recorded (see ``conftest.py``).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest

from .conftest import ObservedRun

pytestmark = pytest.mark.e2e

HEX32 = re.compile(r"[0-9a-f]{32}")
HEX16 = re.compile(r"[0-9a-f]{16}")
ENDING_EVENTS = ("ResponseCompleted", "RequestRejected")


def completed_lines(run: ObservedRun) -> list[dict[str, Any]]:
    return [
        line for line in run.log_lines() if line.get("event") == "request.completed"
    ]


def test_request_line_once_per_request(observed_run: ObservedRun) -> None:
    """No request id has two canonical lines."""
    counts = Counter(line["request_id"] for line in completed_lines(observed_run))
    assert [rid for rid, count in counts.items() if count > 1] == []


def test_request_line_matches_each_ending_event(observed_run: ObservedRun) -> None:
    """Each MCP request's ending audit event has a line with the same fields."""
    lines = {line["request_id"]: line for line in completed_lines(observed_run)}
    endings = [e for e in observed_run.audit_events if e["type"] in ENDING_EVENTS]
    assert len(endings) >= 8
    for event in endings:
        line = lines.get(event["request_id"])
        assert line is not None, event
        for key in ("trace_id", "span_id", "backend", "method", "tool"):
            assert line[key] == event[key], key
        assert line["outcome"] == event["outcome"]
        assert line["status"] == event["status"]
        agent = event["agent"]["id"] if event["agent"] else None
        assert line["agent_id"] == agent


def test_request_line_mcp_fields(observed_run: ObservedRun) -> None:
    """MCP lines carry trace and span ids, backend, method, outcome and duration."""
    mcp = [line for line in completed_lines(observed_run) if "backend" in line]
    assert {line["backend"] for line in mcp} == {"employees", "partners"}
    calls = [line for line in mcp if line["method"] == "tools/call"]
    assert {line["tool"] for line in calls} >= {"list_employees", "list_partners"}
    for line in mcp:
        assert HEX32.fullmatch(line["trace_id"]), line
        assert HEX16.fullmatch(line["span_id"]), line
        assert line["outcome"] in ("success", "denied", "error")
        assert isinstance(line["status"], int)
    assert all(line["duration_ms"] > 0 for line in calls)
    assert {line["agent_id"] for line in calls} == {"cursor"}


def test_request_line_oauth_routes(observed_run: ObservedRun) -> None:
    """Requests to the OAuth front door get a line with the route template."""
    oauth = [line for line in completed_lines(observed_run) if "route" in line]
    routes = {line["route"] for line in oauth}
    assert {"/oauth2/register", "/oauth2/authorize", "/oauth2/token"} <= routes
    assert "/oauth2/callback" in routes
    for line in oauth:
        assert HEX32.fullmatch(line["trace_id"]), line
        assert line["http_method"] in ("GET", "POST")
        assert "?" not in (line["route"] or "")
    denied = [line for line in oauth if line["outcome"] != "success"]
    assert all(line["status"] >= 300 for line in denied)
