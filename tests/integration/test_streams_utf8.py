"""Event streams split at awkward places on the wire, relayed intact.

An SDK server writes whole events, so the backend here is a raw ASGI app
that sends each piece as its own TCP write, with a pause between writes.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from _streams_support import RawResponder, events_of, open_session, raw_stack

from gateway.events import BackendFailed

pytestmark = pytest.mark.anyio

TEXT = "naïve 日本 🙂 line\u2028separator next\u0085line para\u2029graph"


async def test_streams_split_characters_and_line_ends_reassembled() -> None:
    """Characters split across TCP writes and a CR|LF split arrive intact."""

    async def reply(message: dict[str, Any], responder: RawResponder) -> None:
        result = {"content": [{"type": "text", "text": TEXT}], "isError": False}
        answer = {"jsonrpc": "2.0", "id": message["id"], "result": result}
        data = json.dumps(answer, ensure_ascii=False).encode()
        wire = b"event: message\r\ndata: " + data + b"\r\n\r\n"
        emoji = wire.index("🙂".encode())
        kanji = wire.index("日".encode())
        crlf = wire.index(b"\r\n\r\n")
        # Cuts inside a 3-byte and a 4-byte character, and between CR and LF.
        cuts = [kanji + 1, emoji + 2, emoji + 3, crlf + 1, crlf + 3]
        await responder.start(200, {"content-type": "text/event-stream"})
        start = 0
        for cut in [*cuts, len(wire)]:
            await responder.write(wire[start:cut])
            await anyio.sleep(0.03)
            start = cut
        await responder.end()

    async with raw_stack(reply) as (gateway, client, _backend):
        headers = await open_session(client, gateway.mcp_url)
        response = await client.post(
            gateway.mcp_url,
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {}},
            },
            headers=headers,
        )
        await gateway.settle()
        failed = gateway.events_of(BackendFailed)
    events = events_of(response.content)
    [event] = events
    assert event.data is not None
    answer = json.loads(event.data)
    assert response.status_code == 200
    assert answer["id"] == 1
    assert answer["result"]["content"][0]["text"] == TEXT
    assert "\ufffd" not in event.data
    assert failed == []
