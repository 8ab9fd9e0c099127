"""Building and running a chain of stages."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Generic

import msgspec
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from pipeline.errors import ChainConfigError, TerminalStageError
from pipeline.events import Event
from pipeline.registry import (
    REGISTERED,
    StageLookupError,
    StageOrigin,
    StageRegistry,
    parse_ref,
    stage_type,
)
from pipeline.settings import decode_settings
from pipeline.stage import CtxT, NoConfig, RespT, Stage

_tracer = trace.get_tracer("pipeline")


class Chain(Generic[CtxT, RespT]):
    """An ordered, validated list of stages, outermost first.

    Calling the chain runs each stage inside its own span named
    ``stage <name>``. Spans nest as the stages do and each ends when its stage
    returns, so a streamed response outlives the stage spans.
    """

    def __init__(self, stages: Sequence[Stage[CtxT, RespT]]) -> None:
        self.stages: tuple[Stage[CtxT, RespT], ...] = tuple(stages)
        self._span_names = tuple(f"stage {s.name}" for s in self.stages)
        self.stage_timer: Callable[[str, float], None] | None = None
        """Called when a stage returns or raises, with its name and the seconds
        spent in it without the stages after it; None times nothing."""

    async def __call__(self, ctx: CtxT) -> RespT:
        """Run the chain for one request and return its response."""
        return await self._run(0, ctx)

    async def _run(self, index: int, ctx: CtxT) -> RespT:
        if index >= len(self.stages):
            last = self.stages[-1].name if self.stages else "<empty>"
            msg = f"stage {last!r} called the next stage, but it is the last one"
            raise TerminalStageError(msg)
        stage = self.stages[index]

        timer = self.stage_timer
        inner = 0.0

        async def call_next(next_ctx: CtxT) -> RespT:
            nonlocal inner
            if timer is None:
                return await self._run(index + 1, next_ctx)
            began = perf_counter()
            try:
                return await self._run(index + 1, next_ctx)
            finally:
                inner += perf_counter() - began

        started = perf_counter() if timer is not None else 0.0
        with _tracer.start_as_current_span(
            self._span_names[index],
            attributes={"pipeline.stage": stage.name},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                return await stage.handle(ctx, call_next)
            except BaseException as exc:
                if isinstance(exc, Exception):
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            finally:
                if timer is not None:
                    timer(stage.name, perf_counter() - started - inner)


@dataclass(frozen=True)
class StageDeclaration:
    """The declaration of one stage of a built chain.

    Attributes:
        ref: The reference as written in YAML, such as ``authorize/strict``.
        path: The YAML path of the reference, such as ``pipeline[2]``.
        cls: The stage class.
        settings: The decoded settings Struct.
        origin: Where the class came from: registered by the host, an entry
            point, or an import path.
    """

    ref: str
    path: str
    cls: type[Any]
    settings: msgspec.Struct
    origin: StageOrigin = REGISTERED

    @property
    def type_name(self) -> str:
        """The stage type: the reference without its ``/instance`` suffix."""
        return stage_type(self.ref)

    @property
    def instance(self) -> str | None:
        """The instance name after ``/``, or None."""
        return parse_ref(self.ref).instance


@dataclass
class ChainPlan:
    """The result of validating a chain declaration, before instantiation.

    Attributes:
        declarations: One entry per stage, in chain order.
        warnings: Problems that do not stop the chain from being built.
    """

    declarations: list[StageDeclaration]
    warnings: list[str] = field(default_factory=list)


def plan_chain(
    refs: Sequence[str],
    registry: StageRegistry,
    settings: Mapping[str, Any],
    *,
    path: str = "pipeline",
    settings_path: str = "stages",
    given: frozenset[str] = frozenset(),
    check_unused_settings: bool = True,
) -> ChainPlan:
    """Validate a chain declaration and decode each stage's settings.

    The checks, all reported together:

    - each reference is well formed, names a known type or an importable
      class, and appears once (two instances of one type may both appear);
    - each class has the stage attributes, and its ``events`` are
      :class:`~pipeline.events.Event` subclasses;
    - each stage's settings decode into its ``Config``, with no unknown key;
    - each fact a stage requires is given or provided by a stage before it;
    - each ``before``/``after`` constraint holds between the types present;
    - the chain ends with its only terminal stage.

    Args:
        refs: Stage references, outermost first.
        registry: Where type names are looked up.
        settings: The raw settings per reference (``stages.<ref>`` in YAML).
        path: The YAML path of ``refs``, used as the prefix of messages.
        settings_path: The YAML path of ``settings``.
        given: Facts the host provides before the chain runs.
        check_unused_settings: Report settings for references that are not in
            the chain. A host that shares ``settings`` between several chains
            turns this off and checks the union of the chains itself.

    Returns:
        The validated plan.

    Raises:
        ChainConfigError: Listing every problem found, each with its YAML path
            and the fix.
    """
    problems: list[str] = []
    declarations: list[StageDeclaration] = []
    first_seen: dict[str, int] = {}
    resolved: list[type[Any] | None] = []

    for index, ref in enumerate(refs):
        where = f"{path}[{index}]"
        if ref in first_seen:
            problems.append(
                f'{where}: stage "{ref}" appears twice (first at '
                f"{path}[{first_seen[ref]}]); remove one of them, or give each "
                f'its own instance name, such as "{stage_type(ref)}/second"'
            )
            resolved.append(None)
            continue
        first_seen[ref] = index
        try:
            cls = registry.resolve(ref)
        except StageLookupError as exc:
            problems.append(f"{where}: {exc}")
            resolved.append(None)
            continue
        problem = _check_stage_class(cls)
        if problem:
            problems.append(f"{where}: stage {ref!r} {problem}")
            resolved.append(None)
            continue
        resolved.append(cls)
        config_type = getattr(cls, "Config", NoConfig)
        config, problem = decode_settings(
            settings.get(ref), config_type, f"{settings_path}.{ref}"
        )
        if problem:
            problems.append(problem)
            continue
        declarations.append(
            StageDeclaration(ref, where, cls, config, registry.origin(ref))
        )

    problems.extend(_check_facts(refs, resolved, registry, path, given))
    problems.extend(_check_order(refs, resolved, path))
    problems.extend(_check_terminal(refs, resolved, registry, path))
    for key in settings if check_unused_settings else ():
        if key not in first_seen:
            problems.append(
                f"{settings_path}.{key}: settings for a stage that is not in "
                f"{path}; add {key!r} to {path} or remove these settings"
            )
    if problems:
        raise ChainConfigError(problems)
    return ChainPlan(declarations)


def build_chain(
    plan: ChainPlan,
    *,
    resources: Any,
) -> Chain[Any, Any]:
    """Instantiate every stage of a validated plan, in order."""
    stages = [
        decl.cls(name=decl.ref, config=decl.settings, resources=resources)
        for decl in plan.declarations
    ]
    return Chain(stages)


_NAME_SETS = ("requires", "provides", "before", "after")


def _check_stage_class(cls: type[Any]) -> str | None:
    for attr in ("requires", "provides", "terminal", "handle"):
        if not hasattr(cls, attr):
            return f"is not a stage: class {cls.__qualname__} has no {attr!r}"
    for attr in _NAME_SETS:
        names: object = getattr(cls, attr, frozenset())
        valid = isinstance(names, (frozenset, set, tuple, list)) and all(
            isinstance(name, str) for name in names
        )
        if not valid:
            return (
                f"has an invalid {attr!r}: class {cls.__qualname__} must set it to "
                f"a frozenset of strings, not {names!r}"
            )
    events = getattr(cls, "events", ())
    if not isinstance(events, (tuple, list)):
        return (
            f"has an invalid 'events': class {cls.__qualname__} must set it to a "
            f"tuple of event classes, not {events!r}"
        )
    for event in events:
        if not (isinstance(event, type) and issubclass(event, Event)):
            return (
                f"declares the event {event!r}, which is not a subclass of "
                "pipeline.Event"
            )
    return None


def _check_facts(
    refs: Sequence[str],
    resolved: Sequence[type[Any] | None],
    registry: StageRegistry,
    path: str,
    given: frozenset[str],
) -> list[str]:
    problems: list[str] = []
    available = set(given)
    for index, (ref, cls) in enumerate(zip(refs, resolved, strict=True)):
        if cls is None:
            continue
        for fact in sorted(cls.requires):
            if fact in available:
                continue
            fix = _provider_hint(
                fact, refs[index + 1 :], resolved[index + 1 :], registry
            )
            problems.append(
                f'{path}[{index}]: stage "{ref}" requires "{fact}", which no '
                f"stage before it provides; {fix}"
            )
        available.update(cls.provides)
    return problems


def _provider_hint(
    fact: str,
    later_refs: Sequence[str],
    later: Sequence[type[Any] | None],
    registry: StageRegistry,
) -> str:
    for ref, cls in zip(later_refs, later, strict=True):
        if cls is not None and fact in cls.provides:
            return f'put "{ref}" before it'
    providers = [name for name, cls in registry.items() if fact in cls.provides]
    if providers:
        choices = " or ".join(f'"{name}"' for name in sorted(providers))
        return f"add {choices} before it"
    return f'add a stage that provides "{fact}" before it'


def _check_order(
    refs: Sequence[str], resolved: Sequence[type[Any] | None], path: str
) -> list[str]:
    # Constraints name stage types, so one naming "authorize" applies to
    # "authorize/strict" too. A type absent from the chain constrains nothing.
    positions: dict[str, list[int]] = {}
    for index, ref in enumerate(refs):
        positions.setdefault(stage_type(ref), []).append(index)
    problems: list[str] = []
    for index, (ref, cls) in enumerate(zip(refs, resolved, strict=True)):
        if cls is None:
            continue
        own_type = stage_type(ref)
        for other in sorted(getattr(cls, "before", ())):
            for later in positions.get(other, []) if other != own_type else []:
                if later < index:
                    problems.append(
                        f'{path}[{index}]: stage "{ref}" must come before '
                        f'"{refs[later]}" ({path}[{later}]), because its class '
                        f'declares before "{other}"; move "{ref}" above '
                        f'"{refs[later]}"'
                    )
        for other in sorted(getattr(cls, "after", ())):
            for earlier in positions.get(other, []) if other != own_type else []:
                if earlier > index:
                    problems.append(
                        f'{path}[{index}]: stage "{ref}" must come after '
                        f'"{refs[earlier]}" ({path}[{earlier}]), because its class '
                        f'declares after "{other}"; move "{ref}" below '
                        f'"{refs[earlier]}"'
                    )
    return problems


def _check_terminal(
    refs: Sequence[str],
    resolved: Sequence[type[Any] | None],
    registry: StageRegistry,
    path: str,
) -> list[str]:
    terminals = sorted(name for name, cls in registry.items() if cls.terminal)
    ending = " or ".join(f'"{name}"' for name in terminals) or "a terminal stage"
    problems: list[str] = []
    if not refs:
        return [f"{path}: the chain is empty; list its stages, ending with {ending}"]
    for index, (ref, cls) in enumerate(zip(refs, resolved, strict=True)):
        if cls is not None and cls.terminal and index != len(refs) - 1:
            problems.append(
                f'{path}[{index}]: stage "{ref}" is terminal, so nothing after it '
                "would run; move it to the end"
            )
    last = resolved[-1]
    if last is not None and not last.terminal:
        problems.append(
            f'{path}: the chain has no terminal stage; its last stage "{refs[-1]}" '
            f"passes requests on to nothing; end it with {ending}"
        )
    return problems
