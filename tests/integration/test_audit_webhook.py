"""The webhook audit sink against a real receiver process that dies and comes back.

The receiver (``_webhook_receiver.py``) is a separate Python process with an
HTTP server on 127.0.0.1. It records every POST to a file before it
responds. A kill switch file makes it exit abruptly right after recording a
POST, before responding: the gateway then cannot know the batch arrived and
must send it again, which is how duplicates arise in practice.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from _audit_support import (
    WEBHOOK_SECRET,
    audit_demo,
    documented_function,
    free_port,
    jsonl_events,
    received_posts,
    start_receiver,
    stop_receiver,
    unique_in_order,
)
from _case_support import open_session, sign_in, tools_call

from gateway.audit.verify import verify_chain
from gateway.audit.webhook import sign
from gateway.demo.runner import DemoStack

pytestmark = pytest.mark.anyio

WEBHOOK_SINK = "audit.webhook.1"


def webhook_settings(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "webhook",
        "url": f"http://127.0.0.1:{port}/audit",
        "secret": WEBHOOK_SECRET,
        "max_batch": 10,
        "max_wait": 0.02,
        "timeout": 2.0,
        "retry_initial": 0.05,
        "retry_max": 0.3,
        **extra,
    }


def received_events(outfile: Path) -> list[dict[str, Any]]:
    """Return every event of every recorded POST, in arrival order."""
    events: list[dict[str, Any]] = []
    for post in received_posts(outfile):
        events.extend(json.loads(post["body"])["events"])
    return events


async def partners_session(
    stack: DemoStack, client: httpx.AsyncClient
) -> dict[str, str]:
    storage = await sign_in(stack, "partners")
    assert storage.tokens is not None
    token = storage.tokens.access_token
    return await open_session(
        client, stack.mcp_url("partners"), authorization=f"Bearer {token}"
    )


async def call_partners(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    count: int,
    first_id: int = 0,
    finished: list[int] | None = None,
) -> None:
    for n in range(first_id, first_id + count):
        response = await client.post(
            url, json=tools_call(n, "list_partners"), headers=headers
        )
        assert response.status_code == 200, response.text
        if finished is not None:
            finished.append(n)


async def test_webhook_receiver_restart_loses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    """A receiver killed mid-stream and restarted gets every event once, in order."""
    port = free_port()
    outfile = tmp_path / "received.jsonl"
    kill_switch = tmp_path / "die"
    receiver = start_receiver(port, outfile, kill_switch=kill_switch)
    audit = {"sinks": [{"kind": "jsonl"}, webhook_settings(port)]}
    restarted = None
    try:
        async with (
            audit_demo(tmp_path / "var", audit) as stack,
            httpx.AsyncClient(timeout=10.0) as client,
        ):
            headers = await partners_session(stack, client)
            url = stack.mcp_url("partners")
            finished: list[int] = []

            async def restart_when_dead() -> None:
                nonlocal restarted
                with anyio.fail_after(30):
                    while len(finished) < 8:
                        await anyio.sleep(0.01)
                    kill_switch.touch()
                    while receiver.poll() is None:
                        await anyio.sleep(0.02)
                # Down for a while under load: events pile up in the journal.
                await anyio.sleep(0.5)
                restarted = start_receiver(port, outfile)

            async with anyio.create_task_group() as tg:
                tg.start_soon(restart_when_dead)
                for worker in range(4):
                    tg.start_soon(
                        call_partners, client, url, headers, 12, worker * 100, finished
                    )
            bus = stack.gateway.runtime.bus
            with anyio.fail_after(30):
                while bus.pending()[WEBHOOK_SINK] or bus.pending()["audit.jsonl.0"]:
                    await anyio.sleep(0.05)
            reference = jsonl_events(stack.audit_path)
            failures = bus.stats()[WEBHOOK_SINK]["failures"]
    finally:
        stop_receiver(receiver)
        if restarted is not None:
            stop_receiver(restarted)

    assert receiver.returncode == 1
    assert failures >= 1
    posts = received_posts(outfile)
    verify_signature = documented_function("verify_signature")
    for post in posts:
        assert post["content_type"] == "application/json"
        assert verify_signature(
            WEBHOOK_SECRET.encode(), post["signature"], post["body"].encode()
        )

    events = received_events(outfile)
    unique = unique_in_order(events)
    assert len(events) > len(unique)
    assert [e["id"] for e in unique] == [e["id"] for e in reference]
    calls = [
        e
        for e in unique
        if e["type"] == "ResponseCompleted" and e["method"] == "tools/call"
    ]
    assert len(calls) == 48

    chain_breaks = documented_function("chain_breaks")
    assert chain_breaks(unique) == []
    assert unique[0]["prev_hash"] is None
    assert verify_chain([stack.audit_path]).problem is None


async def test_webhook_full_journal_makes_requests_wait(tmp_path: Path) -> None:
    """With the receiver down and the journal full, requests wait; nothing is lost."""
    port = free_port()
    outfile = tmp_path / "received.jsonl"
    receiver = start_receiver(port, outfile)
    audit = {"sinks": [webhook_settings(port)], "journal_max_pending": 8}
    sink = "audit.webhook.0"
    published: list[str] = []
    restarted = None
    try:
        async with (
            audit_demo(tmp_path / "var", audit) as stack,
            httpx.AsyncClient(timeout=20.0) as client,
        ):
            bus = stack.gateway.runtime.bus

            async def collect(event: Any) -> None:
                published.append(event.id)

            bus.subscribe("test.collect", collect)
            headers = await partners_session(stack, client)
            with anyio.fail_after(10):
                while bus.pending()[sink]:
                    await anyio.sleep(0.02)
            stop_receiver(receiver)

            finished: list[int] = []

            async def one_call(n: int) -> None:
                response = await client.post(
                    stack.mcp_url("partners"),
                    json=tools_call(n, "list_partners"),
                    headers=headers,
                )
                assert response.status_code == 200, response.text
                finished.append(n)

            async with anyio.create_task_group() as tg:
                for n in range(3):
                    tg.start_soon(one_call, n)
                await anyio.sleep(1.0)
                waiting = 3 - len(finished)
                depth = bus.pending()[sink]
                restarted = start_receiver(port, outfile)
            with anyio.fail_after(15):
                while bus.pending()[sink]:
                    await anyio.sleep(0.02)
            await anyio.sleep(0.1)
    finally:
        stop_receiver(receiver)
        if restarted is not None:
            stop_receiver(restarted)

    assert waiting >= 1
    assert depth == 8
    assert sorted(finished) == [0, 1, 2]
    unique = unique_in_order(received_events(outfile))
    assert {e["id"] for e in unique} == set(published)
    assert len(unique) == len(published)
    chain_breaks = documented_function("chain_breaks")
    assert chain_breaks(unique) == []


async def test_webhook_signature_rejects_other_secret() -> None:
    """The documented check rejects another secret, body or timestamp."""
    verify_signature = documented_function("verify_signature")
    body = b'{"events":[]}'
    now = int(time.time())
    header = sign(WEBHOOK_SECRET.encode(), now, body)
    assert verify_signature(WEBHOOK_SECRET.encode(), header, body)
    assert not verify_signature(b"another-secret-0123456789", header, body)
    assert not verify_signature(WEBHOOK_SECRET.encode(), header, body + b" ")
    old = sign(WEBHOOK_SECRET.encode(), now - 600, body)
    assert not verify_signature(WEBHOOK_SECRET.encode(), old, body)
    assert not verify_signature(WEBHOOK_SECRET.encode(), "v1=abc", body)
