"""The audit stage's reasons are stable codes, whatever text a failure carries."""

from __future__ import annotations

import re

import pytest

from gateway.audit.config import AuditConfig
from gateway.events import ResponseCompleted
from gateway.mcp.response import GatewayResponse, StreamOutcome
from gateway.stages.audit import AuditStage

from .data_path_support import data_path, make_context

pytestmark = pytest.mark.anyio

REASON_CODE = re.compile(r"^[a-z][a-z0-9_]*$")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize(
    "error",
    [
        "send failed",
        "the backend stream failed: ReadError",
        "discarded: retried after backend 401",
    ],
)
async def test_audit_stream_failure_text_reason_is_code(error: str) -> None:
    """A stream that failed with free text is recorded as stream_failed."""
    async with data_path() as path:
        stage = AuditStage(name="audit", config=AuditConfig(), resources=None)
        response = GatewayResponse(status=200)

        async def call_next(ctx: object) -> GatewayResponse:
            return response

        ctx = make_context(
            path.runtime, message={"jsonrpc": "2.0", "id": 1, "method": "ping"}
        )
        sent = await stage.handle(ctx, call_next)  # type: ignore[arg-type]
        for callback in sent.on_close:
            await callback(StreamOutcome(completed=False, bytes_sent=0, error=error))
        events = await path.settle()
    [completed] = [e for e in events if isinstance(e, ResponseCompleted)]
    assert completed.outcome == "error"
    assert completed.reason == "stream_failed"
    assert completed.reason is not None and REASON_CODE.match(completed.reason)
