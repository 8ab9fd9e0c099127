"""Audit back-pressure on a running gateway: readiness, clients that leave, order.

The gateway writes to a JSON-lines file and to a webhook whose receiver
process is not running, with a small journal, so the webhook journal fills
and requests wait. Then the receiver starts and both streams must hold the
same events in the same order.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx
import pytest
from _audit_support import (
    WEBHOOK_SECRET,
    audit_demo,
    free_port,
    jsonl_events,
    received_posts,
    start_receiver,
    stop_receiver,
    unique_in_order,
)
from _case_support import open_session, sign_in, tools_call

pytestmark = pytest.mark.anyio

WEBHOOK_SINK = "audit.webhook.1"


async def test_full_journal_fails_readiness(
    tmp_path: Path,
) -> None:
    """A full journal fails /readyz; a client that left still gets its events."""
    port = free_port()
    outfile = tmp_path / "received.jsonl"
    webhook = {
        "kind": "webhook",
        "url": f"http://127.0.0.1:{port}/audit",
        "secret": WEBHOOK_SECRET,
        "max_batch": 10,
        "max_wait": 0.02,
        "timeout": 2.0,
        "retry_initial": 0.05,
        "retry_max": 0.2,
    }
    audit = {
        "sinks": [{"kind": "jsonl", "path": "audit.jsonl"}, webhook],
        "journal_max_pending": 6,
    }
    receiver = start_receiver(port, outfile)
    restarted = None
    try:
        async with (
            audit_demo(tmp_path / "var", audit) as stack,
            httpx.AsyncClient(timeout=20.0) as client,
        ):
            bus = stack.gateway.runtime.bus
            storage = await sign_in(stack, "partners")
            assert storage.tokens is not None
            headers = await open_session(
                client,
                stack.mcp_url("partners"),
                authorization=f"Bearer {storage.tokens.access_token}",
            )
            stop_receiver(receiver)

            async def fill() -> None:
                # The request that fills the journal waits, maybe mid-request,
                # until the receiver is back.
                while not bus.full_journals():
                    response = await client.post(
                        stack.mcp_url("partners"),
                        json=tools_call(0, "list_partners"),
                        headers=headers,
                    )
                    assert response.status_code == 200

            async with anyio.create_task_group() as tg:
                tg.start_soon(fill)
                with anyio.fail_after(10):
                    while WEBHOOK_SINK not in bus.full_journals():
                        await anyio.sleep(0.02)
                    while bus.pending()["audit.jsonl.0"]:
                        await anyio.sleep(0.02)
                assert bus.full_journals() == [WEBHOOK_SINK]
                ready = await client.get(f"{stack.urls['gateway']}/readyz")
                assert ready.status_code == 503
                checks = ready.json()["checks"]
                assert checks[f"audit_journal:{WEBHOOK_SINK}"]["reason"] == (
                    "audit_journal_full"
                )
                assert checks["audit_journal:audit.jsonl.0"]["status"] == "ok"

                # These clients give up while their requests wait for space.
                for n in range(3):
                    with pytest.raises(httpx.ReadTimeout):
                        await client.post(
                            stack.mcp_url("partners"),
                            json=tools_call(100 + n, "list_partners"),
                            headers=headers,
                            timeout=0.3,
                        )
                restarted = start_receiver(port, outfile)
            with anyio.fail_after(15):
                while any(bus.pending().values()) or bus.full_journals():
                    await anyio.sleep(0.05)
            await anyio.sleep(0.2)
    finally:
        stop_receiver(receiver)
        if restarted is not None:
            stop_receiver(restarted)

    jsonl = jsonl_events(stack.audit_path)
    webhook_events = unique_in_order(
        [
            e
            for post in received_posts(outfile)
            for e in json.loads(post["body"])["events"]
        ]
    )
    assert [e["id"] for e in webhook_events] == [e["id"] for e in jsonl]
    left = [
        e
        for e in jsonl
        if e["type"] == "ResponseCompleted" and e.get("completed") is False
    ]
    assert len(left) == 3
    for event in left:
        assert event["reason"] == "client_disconnected"
        assert event["status"] == 499
