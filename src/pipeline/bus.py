"""The in-process event bus, with best-effort and durable subscribers."""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.lowlevel
import msgspec
import structlog
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from pipeline.events import Event
from pipeline.intent import IntentLog
from pipeline.journal import Journal

log = structlog.get_logger("pipeline.bus")

Handler = Callable[[Event], Awaitable[None]]

EntryEncoder = Callable[[Event, bytes | None], bytes]
"""Encodes an event as a journal entry, given the journal's newest entry.

The second argument is None for the first entry of a new journal. A durable
subscriber with an encoder can make each entry refer to the one before it,
as a hash chain does.
"""


class Sink(Protocol):
    """The destination of a durable subscriber.

    :meth:`deliver` receives encoded events in publication order. It returns
    only once the batch is safely at its destination. Raising makes the bus
    retry the batch later, possibly with more events appended, so
    destinations de-duplicate by event ``id``. A sink may also define
    ``aclose()`` (a coroutine) or ``close()``, which the bus calls on shutdown.
    """

    async def deliver(self, batch: Sequence[bytes]) -> None:
        """Deliver a batch of encoded events."""
        ...


class RetryAfter(Exception):
    """Raised by a sink whose destination asked for a pause before the retry.

    The bus waits at least ``delay`` seconds, capped by the subscriber's
    ``retry_max``, before it delivers the batch again.
    """

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


@dataclass
class _BestEffort:
    name: str
    handler: Handler
    send: MemoryObjectSendStream[Event]
    receive: MemoryObjectReceiveStream[Event]
    accepts: tuple[type[Event], ...] | None = None
    dropped: int = 0


@dataclass
class _Durable:
    name: str
    sink: Sink
    journal: Journal
    batch_size: int
    linger: float = 0.0
    encode: EntryEncoder | None = None
    retry_initial: float = 0.1
    retry_max: float = 30.0
    delivered: int = 0
    failures: int = 0
    last_error: str | None = None

    def retry_delay(self, attempt: int) -> float:
        """Return the wait before retry number ``attempt`` (0 for the first).

        The bound doubles per attempt from ``retry_initial`` up to
        ``retry_max``. The wait is a random value between half the bound and
        the bound, so subscribers that failed together do not retry in step.
        """
        bound = min(self.retry_max, self.retry_initial * 2.0 ** min(attempt, 30))
        return bound / 2 + random.uniform(0, bound / 2)


class EventBus:
    """Fans events out to subscribers, each with its own queue and task.

    A slow or failing subscriber never delays the others or the publisher, with
    one deliberate exception: a durable subscriber whose journal is full makes
    :meth:`publish` wait, so that no audit event is lost.

    Call :meth:`start` inside a task group before publishing and :meth:`aclose`
    on shutdown.
    """

    def __init__(self) -> None:
        self._best_effort: list[_BestEffort] = []
        self._durable: list[_Durable] = []
        self._encoder = msgspec.json.Encoder()
        self._task_group: TaskGroup | None = None
        self._intent: IntentLog | None = None
        self._last_turn: anyio.Event | None = None

    def subscribe(
        self,
        name: str,
        handler: Handler,
        *,
        max_queue: int = 1000,
        accepts: tuple[type[Event], ...] | None = None,
    ) -> None:
        """Add a best-effort subscriber.

        Publishing never waits for it; when its queue of ``max_queue`` events is
        full, new events are dropped for it and counted in :meth:`stats`.

        Args:
            name: The subscriber's name in stats and logs.
            handler: Called with each event, one at a time, in its own task.
            max_queue: Events queued for it before new ones are dropped.
            accepts: When given, only instances of these classes are queued
                for it; others never reach its queue, its task or its drop
                count. A subscriber that ignores most events saves a task
                switch per ignored event.
        """
        send, receive = anyio.create_memory_object_stream[Event](max_queue)
        sub = _BestEffort(name, handler, send, receive, accepts)
        self._best_effort.append(sub)
        if self._task_group is not None:
            self._task_group.start_soon(self._run_best_effort, sub)

    def subscribe_durable(
        self,
        name: str,
        sink: Sink,
        journal: Journal,
        *,
        batch_size: int = 100,
        linger: float = 0.005,
        encode: EntryEncoder | None = None,
        retry_initial: float = 0.1,
        retry_max: float = 30.0,
    ) -> None:
        """Add a durable subscriber that delivers from ``journal`` to ``sink``.

        A failed delivery is retried until it succeeds, never dropped: the
        waits grow exponentially, with jitter, from ``retry_initial`` to
        ``retry_max`` seconds.

        Args:
            name: The subscriber's name in stats and logs.
            sink: The destination.
            journal: Where events wait for delivery, on disk.
            batch_size: Maximum number of events per delivery.
            linger: Seconds to wait for more events before delivering a batch
                smaller than ``batch_size``; events are already on disk.
            encode: Builds each journal entry from the event and the newest
                entry; None journals the event's plain JSON encoding.
            retry_initial: Bound of the wait before the first retry, in
                seconds; the wait is between half of it and all of it.
            retry_max: Maximum wait between two retries, in seconds.
        """
        sub = _Durable(
            name,
            sink,
            journal,
            batch_size,
            linger,
            encode=encode,
            retry_initial=retry_initial,
            retry_max=retry_max,
        )
        self._durable.append(sub)
        if self._task_group is not None:
            self._task_group.start_soon(self._run_durable, sub)

    def start(self, task_group: TaskGroup) -> None:
        """Start one delivery task per subscriber in ``task_group``."""
        self._task_group = task_group
        for sub in self._best_effort:
            task_group.start_soon(self._run_best_effort, sub)
        for durable in self._durable:
            task_group.start_soon(self._run_durable, durable)

    async def publish(self, event: Event) -> None:
        """Publish one event to every subscriber.

        Returns once every durable subscriber has the event in its journal.
        Events reach each journal in the order :meth:`publish` was called:
        while a journal is full, publishers wait in line, and the first one
        appends once every journal has space again.

        The wait and the appends are shielded from cancellation, so a
        publisher whose request was cancelled (its client left) still
        journals the event, for every durable subscriber, and the
        cancellation takes effect after. On shutdown, :meth:`aclose` lets
        waiting publishers append past the journals' bound.
        """
        for sub in self._best_effort:
            if sub.accepts is not None and not isinstance(event, sub.accepts):
                continue
            try:
                sub.send.send_nowait(event)
            except anyio.WouldBlock:
                sub.dropped += 1
                if sub.dropped == 1 or math.log2(sub.dropped).is_integer():
                    log.warning(
                        "bus.events_dropped", subscriber=sub.name, dropped=sub.dropped
                    )
        if not self._durable:
            return
        previous = self._last_turn
        if previous is None and not any(d.journal.full for d in self._durable):
            # No publisher waits and every journal has space, so the event
            # is appended without a checkpoint, which keeps this case cheap.
            self._append_everywhere(event)
            return
        turn = anyio.Event()
        self._last_turn = turn
        with anyio.CancelScope(shield=True):
            try:
                if previous is not None:
                    await previous.wait()
                # Only the publisher whose turn it is appends, and deliveries
                # only free space, so a journal that has space keeps it while
                # the others are waited for.
                for durable in self._durable:
                    await durable.journal.wait_for_space()
                self._append_everywhere(event)
            finally:
                turn.set()
                if self._last_turn is turn:
                    self._last_turn = None
        # A cancellation that arrived during the wait takes effect now.
        await anyio.lowlevel.checkpoint_if_cancelled()

    def _append_everywhere(self, event: Event) -> None:
        """Append ``event`` to every durable journal, with no await in between.

        Every entry is encoded before the first write, and the set is
        recorded in the intent log (when attached) before any journal is
        appended, so that a crash in between is repaired on restart.
        """
        plain: bytes | None = None
        entries: list[bytes] = []
        for durable in self._durable:
            if durable.encode is not None:
                entries.append(durable.encode(event, durable.journal.last_entry))
                continue
            if plain is None:
                plain = self._encoder.encode(event)
            entries.append(plain)
        if self._intent is not None:
            self._intent.write(
                [
                    (d.name, entry)
                    for d, entry in zip(self._durable, entries, strict=True)
                ]
            )
        for durable, entry in zip(self._durable, entries, strict=True):
            durable.journal.append_nowait(entry)

    def attach_intent_log(self, intent: IntentLog) -> int:
        """Repair the journals from ``intent``, then record each append set in it.

        Call after subscribing the durable subscribers and before
        publishing. The log's newest record is the last event the bus began
        to append before it stopped. A durable subscriber named in the
        record whose journal does not end with its entry lost it to a crash
        between two appends, so the entry is appended now. Entries of
        subscribers no longer subscribed are ignored.

        Returns:
            The number of entries appended by the repair.
        """
        by_name = {durable.name: durable for durable in self._durable}
        repaired = 0
        for name, entry in intent.read():
            durable = by_name.get(name)
            if durable is None or durable.journal.last_entry == entry:
                continue
            durable.journal.append_nowait(entry)
            repaired += 1
            log.warning("bus.journal_repaired", subscriber=name, entries=1)
        self._intent = intent
        return repaired

    def stats(self) -> dict[str, dict[str, Any]]:
        """Return per-subscriber counters: drops, pending entries, failures."""
        out: dict[str, dict[str, Any]] = {}
        for sub in self._best_effort:
            out[sub.name] = {"kind": "best_effort", "dropped": sub.dropped}
        for durable in self._durable:
            out[durable.name] = {
                "kind": "durable",
                "pending": durable.journal.pending,
                "max_pending": durable.journal.max_pending,
                "full": durable.journal.full,
                "delivered": durable.delivered,
                "failures": durable.failures,
                "last_error": durable.last_error,
            }
        return out

    def full_journals(self) -> list[str]:
        """Return the durable subscribers whose journal is full, by name.

        While any is listed, :meth:`publish` waits (back-pressure).
        """
        return [durable.name for durable in self._durable if durable.journal.full]

    def dropped(self) -> dict[str, int]:
        """Return the events each best-effort subscriber dropped, by name.

        Counts only grow while the bus lives; durable subscribers never drop.
        """
        return {sub.name: sub.dropped for sub in self._best_effort}

    def pending(self) -> dict[str, int]:
        """Return the journal depth of each durable subscriber, by name.

        The depth is the number of events journaled but not yet delivered;
        at the journal's ``max_pending``, publishing waits.
        """
        return {durable.name: durable.journal.pending for durable in self._durable}

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait until durable journals and best-effort queues are empty."""
        with anyio.move_on_after(timeout):
            while any(d.journal.pending for d in self._durable) or any(
                s.receive.statistics().current_buffer_used for s in self._best_effort
            ):
                await anyio.sleep(0.01)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Deliver what can be delivered within ``timeout``, then stop.

        Publishers still waiting for journal space append past the bound
        before the journals close, so their events are delivered after the
        restart.
        """
        await self.drain(timeout)
        for durable in self._durable:
            durable.journal.lift_bound()
        last_turn = self._last_turn
        if last_turn is not None:
            await last_turn.wait()
        for sub in self._best_effort:
            await sub.send.aclose()
        for durable in self._durable:
            durable.journal.close()
            await _close_sink(durable.sink)
        if self._intent is not None:
            self._intent.close()

    async def _run_best_effort(self, sub: _BestEffort) -> None:
        async with sub.receive:
            async for event in sub.receive:
                try:
                    await sub.handler(event)
                except Exception:
                    log.exception("bus.subscriber_failed", subscriber=sub.name)

    async def _run_durable(self, sub: _Durable) -> None:
        attempt = 0
        while True:
            await sub.journal.wait()
            if sub.linger and sub.journal.pending < sub.batch_size:
                # Events of one request arrive a few at a time; waiting a
                # moment delivers them in one batch instead of one by one.
                await anyio.sleep(sub.linger)
            batch = sub.journal.peek(sub.batch_size)
            try:
                await sub.sink.deliver(batch)
            except Exception as exc:
                sub.failures += 1
                sub.last_error = f"{type(exc).__name__}: {exc}"
                delay = sub.retry_delay(attempt)
                if isinstance(exc, RetryAfter):
                    delay = min(max(delay, exc.delay), sub.retry_max)
                attempt += 1
                log.warning(
                    "bus.delivery_failed",
                    subscriber=sub.name,
                    error=sub.last_error,
                    pending=sub.journal.pending,
                    retry_in_s=delay,
                )
                await anyio.sleep(delay)
                continue
            attempt = 0
            sub.delivered += len(batch)
            sub.journal.commit(len(batch))


async def _close_sink(sink: Sink) -> None:
    """Call the sink's ``aclose()`` or ``close()``, whichever it has."""
    aclose = getattr(sink, "aclose", None)
    if callable(aclose):
        result = aclose()
        if inspect.isawaitable(result):
            await result
        return
    close = getattr(sink, "close", None)
    if callable(close):
        close()
