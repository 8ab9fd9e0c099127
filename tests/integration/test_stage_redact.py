"""The ``redact`` stage in a running gateway, driven by the official client.

The demo stack serves ``partners`` from an official-SDK backend whose tools
return an e-mail address and an AWS access key id, behind a chain with
``redact`` after ``authorize`` (see :mod:`_stage_support`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from _audit_support import jsonl_events
from _stage_support import (
    ACCESS_KEY,
    BACKEND,
    EMAIL,
    SECRETS,
    access_token,
    sdk_client,
    stage_stack,
)
from _streams_support import MemoryEventStore

from gateway.demo.runner import DemoStack

pytestmark = pytest.mark.anyio

PIPELINE = [
    "audit",
    "authenticate",
    "identify_agent",
    "authorize",
    "redact",
    "exchange",
    "session",
    "forward",
]
CONTACT_REDACTED = "Carol: mail [REDACTED:email], deploy key [REDACTED:aws_access_key]."


async def audit_events(stack: DemoStack, kind: str) -> list[dict[str, Any]]:
    """Wait for the audit sinks, then return the events of one type."""
    bus = stack.gateway.runtime.bus
    with anyio.fail_after(10):
        while any(bus.pending().values()):
            await anyio.sleep(0.02)
    return [e for e in jsonl_events(stack.audit_path) if e["type"] == kind]


def tool_calls(responses: list[httpx2.Response]) -> list[httpx2.Response]:
    """Return the responses to ``tools/call`` POSTs."""
    return [r for r in responses if b'"tools/call"' in r.request.content]


def text_of(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


@pytest.mark.parametrize("json_response", [True, False], ids=["json", "sse"])
async def test_redact_tool_results_reach_client_redacted(
    tmp_path: Path, json_response: bool
) -> None:
    """Text and structured content arrive redacted; the event counts, never values."""
    responses: list[httpx2.Response] = []
    async with stage_stack(
        tmp_path, PIPELINE, {"redact": {}}, json_response=json_response
    ) as stack:
        token = await access_token(stack, agent="cursor")
        async with sdk_client(stack.mcp_url(BACKEND), token, responses) as client:
            contact = await client.call_tool("contact", {"name": "Carol"})
            card = await client.call_tool("contact_card", {"name": "Carol"})
            echoed = await client.call_tool("echo", {"text": "no secrets here"})
        redacted = await audit_events(stack, "ResultRedacted")
        audit_text = stack.audit_path.read_text()

    media_type = "application/json" if json_response else "text/event-stream"
    calls = tool_calls(responses)
    assert len(calls) == 3
    assert all(r.headers["content-type"].startswith(media_type) for r in calls)
    assert text_of(contact) == CONTACT_REDACTED
    assert card.structured_content == {
        "name": "Carol",
        "email": "[REDACTED:email]",
        "notes": ["key [REDACTED:aws_access_key]"],
    }
    for secret in SECRETS:
        assert secret not in text_of(card)
    assert "[REDACTED:email]" in text_of(card)
    assert text_of(echoed) == "no secrets here"
    # The SDK server sends each result twice: as structuredContent and as
    # text content (a str result is wrapped as {"result": ...}).
    assert [(e["tool"], e["counts"]) for e in redacted] == [
        ("contact", {"aws_access_key": 2, "email": 2}),
        ("contact_card", {"aws_access_key": 2, "email": 2}),
    ]
    assert all(e["oversized"] == 0 for e in redacted)
    assert redacted[0]["user"]["sub"] == "00u_alice"
    assert redacted[0]["agent"]["id"] == "cursor"
    assert redacted[0]["stage"] == "redact"
    for secret in SECRETS:
        assert secret not in audit_text


async def test_redact_streamed_result_keeps_progress_untouched(
    tmp_path: Path,
) -> None:
    """In an event stream only the result changes; progress messages pass as sent."""
    progress: list[tuple[float, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None):
        progress.append((value, message))

    responses: list[httpx2.Response] = []
    async with stage_stack(tmp_path, PIPELINE, {"redact": {}}) as stack:
        token = await access_token(stack, agent="cursor")
        async with sdk_client(stack.mcp_url(BACKEND), token, responses) as client:
            result = await client.call_tool(
                "slow_contact", {"name": "Carol"}, progress_callback=on_progress
            )
        redacted = await audit_events(stack, "ResultRedacted")

    calls = tool_calls(responses)
    assert len(calls) == 1
    assert calls[0].headers["content-type"].startswith("text/event-stream")
    assert progress == [(1.0, f"looking up {EMAIL}"), (2.0, f"found {EMAIL}")]
    assert text_of(result) == CONTACT_REDACTED
    assert [e["counts"] for e in redacted] == [{"aws_access_key": 2, "email": 2}]


async def test_redact_resumed_stream_result_redacted(tmp_path: Path) -> None:
    """A result that the client gets by resuming the stream with GET is redacted."""
    responses: list[httpx2.Response] = []
    async with stage_stack(
        tmp_path, PIPELINE, {"redact": {}}, event_store=MemoryEventStore()
    ) as stack:
        token = await access_token(stack, agent="cursor")
        async with sdk_client(stack.mcp_url(BACKEND), token, responses) as client:
            with anyio.fail_after(10):
                result = await client.call_tool("resumed_contact", {"name": "Carol"})
        redacted = await audit_events(stack, "ResultRedacted")

    resumed = [
        r
        for r in responses
        if r.request.method == "GET" and "last-event-id" in r.request.headers
    ]
    assert len(resumed) == 1
    assert text_of(result) == CONTACT_REDACTED
    assert [(e["method"], e["counts"]) for e in redacted] == [
        (None, {"aws_access_key": 2, "email": 2})
    ]


async def test_redact_settings_choose_tools_parts_and_patterns(
    tmp_path: Path,
) -> None:
    """tools, scan, methods, presets and own patterns decide what changes."""
    settings = {
        "presets": ["email"],
        "patterns": {"person": r"Carol(?: Jones)?"},
        "replacement": "<{name} removed>",
        "scan": ["text", "resource"],
        "tools": ["contact*"],
        "methods": ["tools/call", "resources/read"],
    }
    async with stage_stack(tmp_path, PIPELINE, {"redact": settings}) as stack:
        token = await access_token(stack, agent="cursor")
        async with sdk_client(stack.mcp_url(BACKEND), token) as client:
            contact = await client.call_tool("contact", {"name": "Carol"})
            card = await client.call_tool("contact_card", {"name": "Carol"})
            echoed = await client.call_tool("echo", {"text": f"Carol {EMAIL}"})
            record = await client.read_resource("records://carol")
        redacted = await audit_events(stack, "ResultRedacted")

    assert text_of(contact) == (
        f"<person removed>: mail <email removed>, deploy key {ACCESS_KEY}."
    )
    # scan lists no "structured", so only the text of the card changes.
    assert card.structured_content is not None
    assert card.structured_content["email"] == EMAIL
    assert EMAIL not in text_of(card)
    assert text_of(echoed) == f"Carol {EMAIL}"
    assert record.contents[0].text == "<person removed> <<email removed>>"
    assert [(e["method"], e["counts"]) for e in redacted] == [
        ("tools/call", {"email": 1, "person": 1}),
        ("tools/call", {"email": 1, "person": 1}),
        ("resources/read", {"email": 1, "person": 1}),
    ]
