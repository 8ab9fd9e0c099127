"""The ``audit`` stage: the outermost stage, which sees every outcome."""

from __future__ import annotations

import time
from typing import ClassVar

import anyio

from gateway.audit.config import AuditConfig
from gateway.context import RequestContext
from gateway.events import Outcome, ResponseCompleted
from gateway.mcp.asgi import CLIENT_DISCONNECTED
from gateway.mcp.response import GatewayResponse, StreamOutcome
from pipeline import BaseStage, Next


class AuditStage(BaseStage[RequestContext, GatewayResponse]):
    """Publish ``ResponseCompleted`` when a response has been fully sent.

    Reads whatever facts exist when the response ends (``principal``,
    ``agent``), so short-circuits by later stages are recorded with what was
    known. For streamed responses the event is published when the stream
    ends, with ``completed`` False when the client left early. A client that
    leaves ends the request normally (closing a GET stream is how a client
    stops listening): the outcome follows the status, and ``reason`` is
    ``client_disconnected`` unless the response had a reason. An exception
    from a later stage is recorded as an ``error`` outcome and re-raised.

    The sinks are configured here (``stages.audit.sinks``) and run as durable
    bus subscribers, so events from every stage and from the OAuth front door
    reach them. Never ends the chain early.
    """

    provides: ClassVar[frozenset[str]] = frozenset()
    stability = "beta"
    Config = AuditConfig

    async def handle(
        self, ctx: RequestContext, call_next: Next[RequestContext, GatewayResponse]
    ) -> GatewayResponse:
        """Run the chain and record how its response ended."""
        try:
            response = await call_next(ctx)
        except Exception as exc:
            await self._publish(ctx, 500, False, 0, False, "internal_error", repr(exc))
            raise
        except anyio.get_cancelled_exc_class():
            # The endpoint cancels the chain when the client leaves before the
            # response. No response was sent; 499 is nginx's status for a
            # request the client closed. The bus journals the event even in
            # a cancelled scope.
            await self._publish(ctx, 499, False, 0, False, None, CLIENT_DISCONNECTED)
            raise

        async def on_close(outcome: StreamOutcome) -> None:
            reason = (
                response.reason if response.status >= 400 or response.reason else None
            )
            await self._publish(
                ctx,
                response.status,
                response.is_stream,
                outcome.bytes_sent,
                outcome.completed,
                reason,
                outcome.error,
                denied=response.denied,
            )

        response.on_close.append(on_close)
        return response

    async def _publish(
        self,
        ctx: RequestContext,
        status: int,
        streamed: bool,
        bytes_sent: int,
        completed: bool,
        reason: str | None,
        error: str | None,
        *,
        denied: bool = False,
    ) -> None:
        client_left = error == CLIENT_DISCONNECTED
        if client_left:
            error = None
        outcome: Outcome
        if status >= 500 or error:
            outcome = "error"
        elif status in (401, 403) or denied:
            outcome = "denied"
        elif reason is not None:
            outcome = "error"
        else:
            outcome = "success"
        if client_left and reason is None:
            reason = "client_disconnected"
        await ctx.runtime.publish(
            ResponseCompleted(
                **ctx.event_fields(self.name),
                outcome=outcome,
                # ``error`` is free text; the reason must stay a stable code.
                reason=reason or ("stream_failed" if error else None),
                status=status,
                duration_ms=round((time.perf_counter() - ctx.started) * 1000, 3),
                streamed=streamed,
                bytes_sent=bytes_sent,
                completed=completed,
            )
        )
