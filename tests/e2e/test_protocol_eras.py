"""The official client against the demo in both protocol eras.

The demo's employees backend serves both eras; its partners backend plays a
server from before 2026-07-28, so a 2026-07-28 client reaches it through
the gateway's shared backend session.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.bridge.shared import NAMESPACE, SharedSession
from gateway.config import StaticKeyAuth
from gateway.demo.driver import CallReport, MemoryTokenStorage, run_client
from gateway.demo.runner import DemoStack, run_demo
from gateway.store import TypedStore

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

ERAS = {"legacy": "2025-11-25", "2026-07-28": "2026-07-28"}
REPORT_STEPS = 4
STEP_SECONDS = 0.05
"""The demo's ``generate_report`` waits this long before each progress step."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[DemoStack]:
    async with run_demo(ephemeral=True, var_dir=tmp_path) as running:
        yield running


@pytest.mark.parametrize("mode", list(ERAS))
async def test_official_client_progress_arrives_before_tool_finishes(
    stack: DemoStack, mode: str
) -> None:
    """Progress of generate_report reaches the client while the tool still runs."""
    report = await run_client(
        stack.mcp_url("employees"),
        client_name="cursor",
        calls=[("generate_report", {"n": REPORT_STEPS})],
        mode=mode,
    )
    assert report.protocol_version == ERAS[mode]
    is_error, _ = report.results["generate_report"]
    assert not is_error
    assert report.progress == [float(step) for step in range(1, REPORT_STEPS + 1)]
    # The tool sleeps before each of its steps, so the first progress comes
    # at least (steps - 1) sleeps before the result unless a hop buffers.
    finished = report.returned_at["generate_report"]
    assert report.progress_at[0] < finished - (REPORT_STEPS - 2) * STEP_SECONDS


async def drop_backend_session(stack: DemoStack, backend_session_id: str) -> None:
    """End a session at the partners backend itself, as a backend restart would."""
    auth = stack.config.backends["partners"].auth
    assert isinstance(auth, StaticKeyAuth)
    async with httpx.AsyncClient() as http:
        response = await http.delete(
            stack.urls["partners"] + "/mcp",
            headers={
                auth.header: auth.value,
                "mcp-session-id": backend_session_id,
                "mcp-protocol-version": "2025-11-25",
            },
        )
    assert response.status_code in (200, 204)


@pytest.mark.parametrize("mode", list(ERAS))
async def test_official_client_session_survives_backend_dropping_it(
    stack: DemoStack, mode: str
) -> None:
    """After the backend drops its session, the next call re-initializes and works."""
    runtime = stack.gateway.runtime
    dropped: list[str] = []

    async def drop_before_second(name: str, report: CallReport) -> None:
        if name != "get_partner":
            return
        if mode == "legacy":
            assert report.session_id is not None
            record = await runtime.sessions.get(report.session_id)
            assert record is not None and record.backend_session_id
            backend_id = record.backend_session_id
        else:
            shared = TypedStore(runtime.store, NAMESPACE, SharedSession)
            key = "\n".join((stack.urls["idp"], "00u_alice", "cursor", "partners"))
            session = await shared.get(key)
            assert session is not None and session.backend_session_id
            backend_id = session.backend_session_id
        await drop_backend_session(stack, backend_id)
        dropped.append(backend_id)

    report = await run_client(
        stack.mcp_url("partners"),
        client_name="cursor",
        calls=[("list_partners", {}), ("get_partner", {"partner_id": "P-100"})],
        mode=mode,
        storage=MemoryTokenStorage(),
        between_calls=drop_before_second,
    )
    assert report.protocol_version == ERAS[mode]
    assert dropped
    is_error, text = report.results["get_partner"]
    assert not is_error, text
    assert json.loads(text)["partner"]["partner_id"] == "P-100"
