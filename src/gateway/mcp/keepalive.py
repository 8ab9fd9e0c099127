"""Waiting for the next chunk of a stream with a time limit, for keepalives.

A relay that sends a keepalive comment after a quiet period, or gives up at
a deadline, must stop waiting for the backend without stopping the read in
progress. Cancelling ``__anext__`` of an async generator (such as
``httpx.Response.aiter_bytes``) throws into the generator and finishes it,
so the read runs in its own task and a wait that times out leaves that task
running for the next call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Final, cast

KEEPALIVE_COMMENT: Final = b": keepalive\n\n"
"""The SSE comment sent on an idle event stream; clients ignore comments."""

_END: Final = object()


class TimedReader:
    """Reads chunks from an async iterator, each wait bounded by a timeout.

    A wait that times out returns None and leaves the read in progress, so
    no chunk is lost. Reads run in tasks of the running asyncio loop, which
    the gateway needs anyway for its aiohttp backend client. Only one
    coroutine may call :meth:`read` at a time.
    """

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._pending: asyncio.Task[object] | None = None
        self._closed = False

    async def read(self, timeout: float | None) -> bytes | None:
        """Return the next chunk, or None when ``timeout`` seconds pass first.

        A ``timeout`` of None waits as long as it takes, and one of zero or
        less returns a chunk only if it has already arrived.

        Raises:
            StopAsyncIteration: The iterator is exhausted, or the reader was
                closed, also by another task during the wait.
            Exception: Whatever the iterator raised.
        """
        if self._closed:
            raise StopAsyncIteration
        task = self._pending
        if task is None and timeout is None:
            # Nothing to time, so no task: a cancellation from outside ends
            # the whole stream anyway.
            return await self._chunks.__anext__()
        if task is None:
            task = asyncio.get_running_loop().create_task(self._next())
            self._pending = task
        if timeout is None:
            await asyncio.wait({task})
        else:
            await asyncio.wait({task}, timeout=max(timeout, 0.0))
        if self._closed:
            # Closed by another task meanwhile, which cancelled the read.
            raise StopAsyncIteration
        if not task.done():
            return None
        self._pending = None
        chunk = task.result()
        if chunk is _END:
            raise StopAsyncIteration
        return cast(bytes, chunk)

    async def _next(self) -> object:
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            return _END

    async def aclose(self) -> None:
        """Stop the read in progress and close the iterator; safe to repeat."""
        if self._closed:
            return
        self._closed = True
        task, self._pending = self._pending, None
        if task is not None:
            task.cancel()
            # asyncio.wait returns without raising the task's exception or
            # cancellation, so only a cancellation of this coroutine raises.
            await asyncio.wait({task})
            if not task.cancelled():
                task.exception()
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()
