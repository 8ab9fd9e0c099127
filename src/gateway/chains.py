"""Resolving and validating the chain of every backend."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from gateway.agents import DEFAULT_AGENT
from gateway.config import GatewayConfig, NoAuth
from gateway.context import RequestContext
from gateway.errors import ConfigError
from gateway.events import GatewayEvent, audit_event_union
from gateway.facts import (
    AGENT,
    BACKEND_CREDENTIALS,
    DECISION,
    PRINCIPAL,
    AgentIdentity,
    BackendCredentials,
    Decision,
    Principal,
)
from gateway.mcp.response import GatewayResponse
from gateway.redaction import default_redactor
from gateway.stages import builtin_registry
from pipeline import (
    BaseStage,
    Chain,
    ChainConfigError,
    ChainPlan,
    Next,
    StageRegistry,
    plan_chain,
    stage_type,
)
from pipeline.stage import NoConfig

ANONYMOUS_FACTS = frozenset({PRINCIPAL, AGENT, DECISION, BACKEND_CREDENTIALS})


@dataclass
class BackendChainPlan:
    """The validated chain of one backend.

    Attributes:
        backend: The backend name.
        source: The YAML path the chain came from.
        plan: The validated stages with their settings.
        anonymous: Whether anonymous facts are provided before the chain.
    """

    backend: str
    source: str
    plan: ChainPlan
    anonymous: bool


class AnonymousStage(BaseStage[RequestContext, GatewayResponse]):
    """Provide fixed facts for a backend marked ``anonymous: true``.

    Inserted by the gateway in front of such a backend's chain, never listed
    in YAML. The principal has issuer ``anonymous`` and no grant.
    """

    provides: ClassVar[frozenset[str]] = ANONYMOUS_FACTS

    async def handle(
        self, ctx: RequestContext, call_next: Next[RequestContext, GatewayResponse]
    ) -> GatewayResponse:
        """Provide the anonymous facts and continue."""
        ctx.provide(
            PRINCIPAL,
            Principal(iss="anonymous", sub="anonymous", client_id="", grant_id=""),
        )
        ctx.provide(
            AGENT,
            AgentIdentity(
                id="anonymous", verified=False, trust="unknown", client_id=""
            ),
        )
        ctx.provide(
            DECISION, Decision(allowed=True, backend=ctx.backend_name, rule="anonymous")
        )
        ctx.provide(BACKEND_CREDENTIALS, BackendCredentials(headers={}, kind="none"))
        return await call_next(ctx)


def plan_backend_chains(
    config: GatewayConfig, registry: StageRegistry | None = None
) -> tuple[dict[str, BackendChainPlan], list[str]]:
    """Validate the chain of every backend.

    Besides the checks of :func:`pipeline.plan_chain` on each chain, this
    reports problems of the installed plug-in stages and settings that no
    chain uses. It also reports policies that name a backend whose chain
    does not use them, audit sinks set on more than one ``audit`` instance,
    and custom event classes that are not gateway events or reuse another
    event's ``type``.

    Returns:
        The plan per backend name, and warnings (such as a chain without
        ``audit``).

    Raises:
        ConfigError: Listing every problem of every chain at once.
    """
    registry = registry or builtin_registry()
    problems: list[str] = list(registry.problems)
    warnings: list[str] = []
    plans: dict[str, BackendChainPlan] = {}
    default_result: ChainPlan | ChainConfigError | None = None
    used: set[str] = set()

    for name, backend in config.backends.items():
        own = backend.pipeline is not None
        refs = backend.pipeline if backend.pipeline is not None else config.pipeline
        used.update(refs)
        source = f"backends.{name}.pipeline" if own else "pipeline"
        given = ANONYMOUS_FACTS if backend.anonymous else frozenset()
        if backend.anonymous and not isinstance(backend.auth, NoAuth):
            problems.append(
                f"backends.{name}.auth: an anonymous backend must not get a "
                "credential; set auth.kind to none or remove anonymous: true"
            )
        if not own and not backend.anonymous and default_result is not None:
            result = default_result
        else:
            try:
                result = plan_chain(
                    refs,
                    registry,
                    config.stages,
                    path=source,
                    given=given,
                    check_unused_settings=False,
                )
            except ChainConfigError as exc:
                result = exc
            if not own and not backend.anonymous:
                default_result = result
        if isinstance(result, ChainConfigError):
            problems.extend(p for p in result.problems if p not in problems)
            continue
        warning = (
            f'{source}: the chain has no "audit" stage, so its requests are not '
            'audited; add "audit" as the first stage'
        )
        has_audit = any(stage_type(ref) == "audit" for ref in refs)
        if not has_audit and warning not in warnings:
            warnings.append(warning)
        plans[name] = BackendChainPlan(name, source, result, backend.anonymous)
    problems.extend(_constructor_problems(plans.values()))
    problems.extend(_unknown_policy_backends(config))
    problems.extend(_unknown_rate_limit_agents(config))
    problems.extend(_shared_audit_settings(config))
    problems.extend(event_problems(plans.values()))
    for key in config.stages:
        if key not in used:
            problems.append(
                f"stages.{key}: settings for a stage that no chain uses; add "
                f"{key!r} to a pipeline or remove these settings"
            )
    if problems:
        raise ConfigError(problems)
    return plans, warnings


def chain_refs(config: GatewayConfig, backend: str) -> list[str]:
    """Return the references of a backend's chain: its own or the default."""
    own = config.backends[backend].pipeline
    return own if own is not None else config.pipeline


_BACKEND_KEYED_SETTINGS = ("tool_scopes", "require_verified_agent")
"""Settings of ``authorize`` stages that name backends."""


def _unknown_policy_backends(config: GatewayConfig) -> list[str]:
    # A misspelt backend name in a policy would silently apply to nothing, and
    # so would a policy of an instance that the backend's chain does not run.
    problems: list[str] = []
    for key, settings in config.stages.items():
        if stage_type(key) != "authorize" or not isinstance(settings, dict):
            continue
        for setting in _BACKEND_KEYED_SETTINGS:
            named = settings.get(setting)
            if not isinstance(named, (dict, list)):
                continue
            for backend in named:
                if not isinstance(backend, str):
                    continue
                where = f"stages.{key}.{setting}"
                if backend not in config.backends:
                    problems.append(
                        f"{where}: unknown backend {backend!r}; "
                        f"use one of: {', '.join(sorted(config.backends))}"
                    )
                elif key not in chain_refs(config, backend):
                    problems.append(
                        f"{where}: backend {backend!r} does not run {key!r}, so "
                        f"this setting would never apply; add {key!r} to its "
                        "chain or move the setting to the authorize stage it runs"
                    )
    return problems


_BUILT_IN_AGENTS = (DEFAULT_AGENT, "anonymous")
"""Agent ids that exist without an ``agents`` entry."""


def _unknown_rate_limit_agents(config: GatewayConfig) -> list[str]:
    # A misspelt agent in a rate limit override would leave that agent on the
    # stage's general limit without a word.
    known = sorted({*config.agents, *_BUILT_IN_AGENTS})
    problems: list[str] = []
    for key, settings in config.stages.items():
        if stage_type(key) != "rate_limit" or not isinstance(settings, dict):
            continue
        agents = settings.get("agents")
        if not isinstance(agents, dict):
            continue
        for agent in agents:
            if isinstance(agent, str) and agent not in known:
                problems.append(
                    f"stages.{key}.agents: unknown agent {agent!r}; "
                    f"use one of: {', '.join(known)}"
                )
    return problems


def audit_settings_key(config: GatewayConfig) -> str | None:
    """Return the ``stages`` key that contains the audit sink settings, if any.

    The key is ``audit`` or an instance such as ``audit/main``. Chain
    planning rejects a config where more than one key contains them.
    """
    for key in config.stages:
        if stage_type(key) == "audit":
            return key
    return None


def _shared_audit_settings(config: GatewayConfig) -> list[str]:
    # The sinks subscribe to the whole bus, not to one chain, so one set of
    # sink settings serves every chain and every audit instance.
    keys = [key for key in config.stages if stage_type(key) == "audit"]
    return [
        f"stages.{key}: the audit sinks are already set under stages.{keys[0]}; "
        "they receive the events of every chain, so set them under one audit "
        "instance only and remove these settings"
        for key in keys[1:]
    ]


def stage_event_types(plans: Iterable[BackendChainPlan]) -> list[type[GatewayEvent]]:
    """Return the event classes that the stages of these chains declare.

    Each class appears once, in chain order. Built-in stages publish only
    the gateway's own events and declare none.
    """
    found: list[type[GatewayEvent]] = []
    for plan in plans:
        for decl in plan.plan.declarations:
            for event in getattr(decl.cls, "events", ()):
                if issubclass(event, GatewayEvent) and event not in found:
                    found.append(event)
    return found


def event_problems(plans: Iterable[BackendChainPlan]) -> list[str]:
    """Check the event classes that stages declare.

    Each must derive from :class:`gateway.events.GatewayEvent`, so that it
    carries the common audit fields, and its ``type`` tag must not be the
    tag of another event class: readers of the audit file tell events apart
    by that tag alone.
    """
    builtin = {
        _event_tag(cls): cls
        for cls in _union_members(audit_event_union())
        if cls.__module__.startswith("gateway.")
    }
    claimed: dict[str, tuple[type[Any], str]] = {}
    problems: list[str] = []
    for plan in plans:
        for decl in plan.plan.declarations:
            for event in getattr(decl.cls, "events", ()):
                where = f"{decl.path}: stage {decl.ref!r} declares the event"
                name = f"{event.__module__}.{event.__qualname__}"
                if not issubclass(event, GatewayEvent):
                    problem = (
                        f"{where} {name}, which does not derive from "
                        "gateway.events.GatewayEvent; derive it from "
                        "GatewayEvent so that it carries the common audit fields"
                    )
                else:
                    tag = _event_tag(event)
                    other, owner = claimed.get(tag, (builtin.get(tag), "the gateway"))
                    if other is None or other is event:
                        claimed[tag] = (event, repr(decl.ref))
                        continue
                    problem = (
                        f"{where} {name}, whose type {tag!r} is already the type "
                        f"of {other.__module__}.{other.__qualname__} (declared by "
                        f"{owner}); rename the class or set its tag"
                    )
                if problem not in problems:
                    problems.append(problem)
    return problems


def _event_tag(cls: type[Any]) -> str:
    return str(cls.__struct_config__.tag)


def _union_members(union: Any) -> tuple[type[Any], ...]:
    return tuple(getattr(union, "__args__", (union,)))


def _constructor_problems(plans: Iterable[BackendChainPlan]) -> list[str]:
    """Report stage classes that cannot be built with name, config and resources.

    Every stage is built as ``cls(name=..., config=..., resources=...)``.
    """
    problems: list[str] = []
    for plan in plans:
        for decl in plan.plan.declarations:
            try:
                signature = inspect.signature(decl.cls)
            except (TypeError, ValueError):
                continue
            try:
                signature.bind(name=decl.ref, config=None, resources=None)
            except TypeError as exc:
                problem = (
                    f"{decl.path}: stage {decl.ref!r} cannot be built: its class "
                    f"must accept the keyword arguments name, config and "
                    f"resources ({exc})"
                )
                if problem not in problems:
                    problems.append(problem)
    return problems


def instantiate(plan: BackendChainPlan, resources: Any) -> Chain[Any, Any]:
    """Build the runnable chain of one backend.

    Raises:
        ConfigError: A stage's constructor raised; the problem names the
            stage reference, the exception class and its redacted message.
    """
    stages: list[Any] = []
    for decl in plan.plan.declarations:
        try:
            stages.append(
                decl.cls(name=decl.ref, config=decl.settings, resources=resources)
            )
        except Exception as exc:
            detail = default_redactor.scrub_text(str(exc))
            problem = (
                f"{decl.path}: stage {decl.ref!r} failed to start: "
                f"{type(exc).__name__}: {detail}"
            )
            raise ConfigError([problem]) from exc
    if plan.anonymous:
        anonymous = AnonymousStage(
            name="anonymous", config=NoConfig(), resources=resources
        )
        stages.insert(0, anonymous)
    return Chain(stages)
