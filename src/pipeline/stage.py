"""The stage protocol: one link of a middleware chain."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar, runtime_checkable

import msgspec

from pipeline.context import Context

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
    """

    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()
    terminal: ClassVar[bool] = False
    stability: ClassVar[Stability] = "development"
    Config: ClassVar[type[msgspec.Struct]] = NoConfig

    def __init__(self, *, name: str, config: Any, resources: Any) -> None:
        self.name = name
        self.config = config
        self.resources = resources

    async def handle(self, ctx: CtxT, call_next: Next[CtxT, RespT]) -> RespT:
        """Process one request; subclasses override this."""
        raise NotImplementedError
