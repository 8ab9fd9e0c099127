"""The stage protocol: one link of a middleware chain."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar, runtime_checkable

import msgspec

from pipeline.context import Context
from pipeline.events import Event

CtxT = TypeVar("CtxT", bound=Context)
RespT = TypeVar("RespT")

Next = Callable[[CtxT], Awaitable[RespT]]
"""The rest of the chain: call it to run every stage after the current one."""

Stability = Literal["development", "alpha", "beta", "stable"]


class NoConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The settings of a stage that takes none."""


@runtime_checkable
class Stage(Protocol[CtxT, RespT]):
    """One link of a chain.

    A stage receives the request context and ``call_next``. It may act before
    calling ``call_next``, return a response of its own instead (ending the chain
    early), or change the response that ``call_next`` returns.

    Attributes:
        name: The instance name used in spans, events and error messages.
        requires: Facts that stages before this one must provide.
        provides: Facts this stage adds to the context.
        terminal: Whether the stage ends the chain; only the last stage may.

    A stage class may also set the optional class attributes of
    :class:`BaseStage`: ``before``, ``after``, ``events``, ``stability`` and
    ``Config``. The chain builder reads them with defaults when absent.
    """

    name: str
    requires: ClassVar[frozenset[str]]
    provides: ClassVar[frozenset[str]]
    terminal: ClassVar[bool]

    async def handle(self, ctx: CtxT, call_next: Next[CtxT, RespT]) -> RespT:
        """Process one request."""
        ...


class BaseStage(Generic[CtxT, RespT]):
    """Shared behaviour for stage classes.

    Subclasses set the class attributes, optionally a ``Config`` Struct for their
    settings, and implement :meth:`handle`. The chain builder constructs a stage
    as ``cls(name=..., config=..., resources=...)``, where ``config`` is an
    instance of ``cls.Config`` decoded from YAML and ``resources`` is whatever
    object the host application passes to the builder.

    Attributes:
        requires: Facts that stages before this one must provide.
        provides: Facts this stage adds to the context.
        terminal: Whether the stage ends the chain; only the last stage may.
        before: Stage types that must come after this stage when a chain
            contains them. A type listed here that the chain lacks is no
            problem; use ``requires`` to demand that a stage is present.
        after: Stage types that must come before this stage when a chain
            contains them, with the same rule for absent types.
        events: The event classes this stage publishes besides those of its
            host, so that hosts can check them and add them to their
            published event schema.
        stability: How settled the stage's behaviour is; informational.
        Config: The Struct that the stage's settings are decoded into.
    """

    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()
    terminal: ClassVar[bool] = False
    before: ClassVar[frozenset[str]] = frozenset()
    after: ClassVar[frozenset[str]] = frozenset()
    events: ClassVar[tuple[type[Event], ...]] = ()
    stability: ClassVar[Stability] = "development"
    Config: ClassVar[type[msgspec.Struct]] = NoConfig

    def __init__(self, *, name: str, config: Any, resources: Any) -> None:
        self.name = name
        self.config = config
        self.resources = resources

    async def handle(self, ctx: CtxT, call_next: Next[CtxT, RespT]) -> RespT:
        """Process one request; subclasses override this."""
        raise NotImplementedError
