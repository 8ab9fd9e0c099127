"""Resolving and validating the chain of every backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from gateway.config import GatewayConfig, NoAuth
from gateway.context import RequestContext
from gateway.errors import ConfigError
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
from gateway.stages import builtin_registry
from pipeline import (
    BaseStage,
    Chain,
    ChainConfigError,
    ChainPlan,
    Next,
    StageDeclaration,
    StageRegistry,
    build_chain,
    plan_chain,
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

    Returns:
        The plan per backend name, and warnings (such as a chain without
        ``audit``).

    Raises:
        ConfigError: Listing every problem of every chain at once.
    """
    registry = registry or builtin_registry()
    problems: list[str] = []
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
        if "audit" not in refs and warning not in warnings:
            warnings.append(warning)
        plans[name] = BackendChainPlan(name, source, result, backend.anonymous)
    problems.extend(_unknown_policy_backends(config))
    for key in config.stages:
        if key not in used:
            problems.append(
                f"stages.{key}: settings for a stage that no chain uses; add "
                f"{key!r} to a pipeline or remove these settings"
            )
    if problems:
        raise ConfigError(problems)
    return plans, warnings


_BACKEND_KEYED_SETTINGS = ("tool_scopes", "require_verified_agent")
"""Settings of ``authorize`` stages that name backends."""


def _unknown_policy_backends(config: GatewayConfig) -> list[str]:
    # A misspelt backend name in a policy would silently apply to nothing.
    problems: list[str] = []
    for key, settings in config.stages.items():
        if key.split("/", 1)[0] != "authorize" or not isinstance(settings, dict):
            continue
        for setting in _BACKEND_KEYED_SETTINGS:
            named = settings.get(setting)
            if not isinstance(named, (dict, list)):
                continue
            for backend in named:
                if isinstance(backend, str) and backend not in config.backends:
                    problems.append(
                        f"stages.{key}.{setting}: unknown backend {backend!r}; "
                        f"use one of: {', '.join(sorted(config.backends))}"
                    )
    return problems


def instantiate(plan: BackendChainPlan, resources: Any) -> Chain[Any, Any]:
    """Build the runnable chain of one backend."""
    chain = build_chain(plan.plan, resources=resources)
    if not plan.anonymous:
        return chain
    anonymous = AnonymousStage(name="anonymous", config=NoConfig(), resources=resources)
    return Chain([anonymous, *chain.stages])


def describe(plan: BackendChainPlan) -> list[str]:
    """Return printable lines describing a backend's chain, for ``check``."""
    lines = [f"backend {plan.backend} ({plan.source}):"]
    for index, decl in enumerate(plan.plan.declarations):
        lines.append(_describe_stage(index, decl))
    return lines


def _describe_stage(index: int, decl: StageDeclaration) -> str:
    requires = ", ".join(sorted(decl.cls.requires)) or "-"
    provides = ", ".join(sorted(decl.cls.provides)) or "-"
    terminal = " (terminal)" if decl.cls.terminal else ""
    return (
        f"  {index + 1}. {decl.ref}{terminal}  requires: {requires}  "
        f"provides: {provides}"
    )
