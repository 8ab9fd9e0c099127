"""Small stage classes that the pipeline tests build chains from."""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from pipeline import BaseStage, Context, Next


class Recorder(Context):
    """A context that records the order in which stages ran."""

    __slots__ = ("trail",)

    def __init__(self) -> None:
        super().__init__()
        self.trail: list[str] = []


class Login(BaseStage[Recorder, str]):
    provides: ClassVar[frozenset[str]] = frozenset({"principal"})

    async def handle(self, ctx: Recorder, call_next: Next[Recorder, str]) -> str:
        ctx.trail.append(self.name)
        ctx.provide("principal", "alice")
        return await call_next(ctx)


class Policy(BaseStage[Recorder, str]):
    requires: ClassVar[frozenset[str]] = frozenset({"principal"})
    provides: ClassVar[frozenset[str]] = frozenset({"decision"})

    class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
        deny: list[str] = msgspec.field(default_factory=list)

    async def handle(self, ctx: Recorder, call_next: Next[Recorder, str]) -> str:
        ctx.trail.append(self.name)
        if ctx.fact("principal") in self.config.deny:
            return "denied"
        ctx.provide("decision", True)
        return (await call_next(ctx)).upper()


class Send(BaseStage[Recorder, str]):
    requires: ClassVar[frozenset[str]] = frozenset({"principal", "decision"})
    terminal: ClassVar[bool] = True

    async def handle(self, ctx: Recorder, call_next: Next[Recorder, str]) -> str:
        ctx.trail.append(self.name)
        return f"sent for {ctx.fact('principal')}"


class Stamp(BaseStage[Recorder, str]):
    """A custom stage loaded by ``module:Class`` reference in tests."""

    async def handle(self, ctx: Recorder, call_next: Next[Recorder, str]) -> str:
        ctx.trail.append(self.name)
        return await call_next(ctx)


class Broken(BaseStage[Recorder, str]):
    async def handle(self, ctx: Recorder, call_next: Next[Recorder, str]) -> str:
        msg = "stage failed"
        raise RuntimeError(msg)


class NotAStage:
    pass


def registry_stages() -> dict[str, Any]:
    return {"login": Login, "policy": Policy, "send": Send, "broken": Broken}
