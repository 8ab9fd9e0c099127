"""The runtime of one configuration, built at start-up and on every reload.

A gateway has one *base* runtime, which owns the services (store, bus, keys,
grants, upstream clients, credential caches) and which long-lived tasks use:
the admin API, key rotation and the readiness checks. Each configuration gets
its own runtime as well, a *generation*: it shares those services and has
its own ``config``, ``agents``, credentials view, chains and backend table.
The HTTP layer hands each request the generation that is current when the
request arrives, and the request keeps it to its end, so a reload never
changes the config under a request in flight.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Collection, Mapping
from typing import Any

from gateway.agents import AgentResolver
from gateway.chains import BackendChainPlan, instantiate
from gateway.config import GatewayConfig
from gateway.mcp.backend import BackendClient
from gateway.runtime import ActiveRequests, BackendRuntime, Runtime

__all__ = ["build_generation", "chain_signature", "mirror"]


def build_generation(
    base: Runtime,
    config: GatewayConfig,
    plans: Mapping[str, BackendChainPlan],
    *,
    previous: Runtime | None = None,
    keep_chains: Collection[str] = (),
) -> Runtime:
    """Build the runtime that serves ``config``, sharing the services of ``base``.

    Every stage is built before any HTTP client is created, so a stage that
    rejects its settings leaves nothing to close.

    Args:
        base: The gateway's base runtime.
        config: The validated config.
        plans: The validated chain of every backend of ``config``.
        previous: The generation being replaced, if any. A backend whose
            config is equal in both keeps its pooled HTTP client.
        keep_chains: Backends that also keep their chain object, and with it
            the in-memory state of its stages; only those whose backend
            config is equal in both count.

    Raises:
        ConfigError: A stage rejected its settings when it was built.
    """
    # The copy shares the token cache, discovery cache and HTTP client of the
    # base's service (only __init__ binds its attributes), so only its
    # config differs: a request in flight keeps its config's backend auth.
    credentials = copy.copy(base.credentials)
    credentials.config = config
    generation = dataclasses.replace(
        base,
        config=config,
        agents=AgentResolver(config),
        credentials=credentials,
        backends={},
        by_path={},
        active=ActiveRequests(),
    )
    kept: dict[str, BackendRuntime] = {}
    if previous is not None:
        kept = {
            name: backend
            for name, backend in previous.backends.items()
            if config.backends.get(name) == backend.config
        }
    chains: dict[str, Any] = {}
    for name, plan in plans.items():
        if name in kept and name in keep_chains:
            chains[name] = kept[name].chain
        else:
            chains[name] = instantiate(plan, generation)
    for name, chain in chains.items():
        backend = config.backends[name]
        generation.backends[name] = BackendRuntime(
            name=name,
            config=backend,
            resource=generation.resource_for(name),
            chain=chain,
            client=kept[name].client if name in kept else BackendClient(backend),
        )
        generation.by_path[backend.path] = name
    return generation


def mirror(base: Runtime, generation: Runtime) -> None:
    """Make the base runtime show the config of ``generation``.

    Runs without awaiting, so no other task reads a half-updated base.
    """
    base.config = generation.config
    base.agents = generation.agents
    base.backends = generation.backends
    base.by_path = generation.by_path
    base.credentials.config = generation.config


def chain_signature(plan: BackendChainPlan) -> tuple[Any, ...]:
    """Return what makes two chains behave alike: stages, classes and settings.

    The YAML path is left out, so moving an unchanged chain from
    ``pipeline`` to ``backends.<name>.pipeline`` is no change.
    """
    stages = tuple(
        (declaration.ref, declaration.cls, declaration.settings)
        for declaration in plan.plan.declarations
    )
    return (plan.anonymous, stages)
