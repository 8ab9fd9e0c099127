"""Retiring the runtime of a replaced config once its requests have ended.

After a reload, the requests that started before the switch keep running on
the replaced runtime. The connection pools that only that runtime used, the
pools of removed or changed backends, are closed once those requests have
ended, and then the sessions of removed backends end.
"""

from __future__ import annotations

import anyio
import structlog
from anyio.abc import TaskGroup

from gateway.bridge.handshake import session_ref
from gateway.events import SessionEnded, UserRef
from gateway.mcp.backend import BackendClient
from gateway.runtime import Runtime
from gateway.sessions import NAMESPACE as SESSION_NAMESPACE
from gateway.sessions import SessionRecord
from gateway.store import TypedStore

__all__ = ["RuntimeDrainer"]

log = structlog.get_logger("gateway.reload")

_STAGE = "reload"


class RuntimeDrainer:
    """Closes what replaced runtimes alone used, once their requests end.

    Args:
        base: The gateway's base runtime, whose config is the current one.
        timeout: Seconds to wait for the requests of a replaced runtime; the
            pools are closed then even if requests are still in flight.
    """

    def __init__(self, base: Runtime, *, timeout: float) -> None:
        self._base = base
        self._timeout = timeout
        self._draining: list[Runtime] = []

    def retire(
        self,
        tasks: TaskGroup,
        replaced: Runtime,
        current: Runtime,
        removed: list[str],
    ) -> None:
        """Start draining ``replaced`` in ``tasks``.

        Args:
            tasks: The task group the drain runs in; cancelling it closes the
                pools at once.
            replaced: The runtime that served before the switch.
            current: The runtime that serves now.
            removed: The backends that ``current`` no longer has.
        """
        in_use = {id(backend.client) for backend in current.backends.values()}
        unused = [
            backend.client
            for backend in replaced.backends.values()
            if id(backend.client) not in in_use
        ]
        self._draining.append(replaced)
        tasks.start_soon(self._drain, replaced, unused, removed)

    async def _drain(
        self, replaced: Runtime, unused: list[BackendClient], removed: list[str]
    ) -> None:
        # Older runtimes still draining may use the same pools, because an
        # unchanged backend hands its pool from one config to the next.
        draining = list(self._draining)
        try:
            with anyio.move_on_after(self._timeout) as scope:
                for runtime in draining:
                    await runtime.active.wait_idle()
            if scope.cancelled_caught:
                # NOTE: closing a pool does not end an event stream still
                # relayed from it; that client waits for its own timeout.
                log.warning(
                    "config.drain_timed_out",
                    in_flight=sum(runtime.active.count for runtime in draining),
                    timeout=self._timeout,
                    detail="closing the connection pools of the replaced config",
                )
            if removed:
                await self._end_sessions(removed)
        finally:
            self._draining.remove(replaced)
            with anyio.CancelScope(shield=True):
                for client in unused:
                    await client.aclose()

    async def _end_sessions(self, removed: list[str]) -> None:
        """End the sessions of backends that the current config does not have."""
        base = self._base
        still_removed = set(removed) - set(base.config.backends)
        if not still_removed:
            return
        records = TypedStore(base.store, SESSION_NAMESPACE, SessionRecord)
        ended = 0
        async for session_id, record in records.scan():
            if record.backend not in still_removed:
                continue
            await base.sessions.delete(session_id)
            await base.publish(
                SessionEnded(
                    stage=_STAGE,
                    reason="backend_removed",
                    backend=record.backend,
                    user=UserRef(iss=record.user_iss, sub=record.user_sub),
                    session=session_ref(session_id),
                )
            )
            ended += 1
        log.info(
            "config.sessions_ended", backends=sorted(still_removed), sessions=ended
        )
