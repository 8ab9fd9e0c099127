"""The built-in stages and their registry."""

from __future__ import annotations

from importlib.metadata import entry_points

from pipeline import StageRegistry

BUILTIN_STAGES = (
    "audit",
    "authenticate",
    "identify_agent",
    "authorize",
    "exchange",
    "session",
    "forward",
)
ENTRY_POINT_GROUP = "agent_proxy.stages"


def builtin_registry() -> StageRegistry:
    """Return a registry with the built-in stages and installed plug-in stages.

    Plug-in packages register stages in the ``agent_proxy.stages`` entry-point
    group; a plug-in cannot replace a built-in name.
    """
    from gateway.stages.audit import AuditStage
    from gateway.stages.authenticate import AuthenticateStage
    from gateway.stages.authorize import AuthorizeStage
    from gateway.stages.exchange import ExchangeStage
    from gateway.stages.forward import ForwardStage
    from gateway.stages.identify_agent import IdentifyAgentStage
    from gateway.stages.session import SessionStage

    registry = StageRegistry(
        {
            "audit": AuditStage,
            "authenticate": AuthenticateStage,
            "identify_agent": IdentifyAgentStage,
            "authorize": AuthorizeStage,
            "exchange": ExchangeStage,
            "session": SessionStage,
            "forward": ForwardStage,
        }
    )
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in BUILTIN_STAGES:
            registry.register(ep.name, ep.load())
    return registry
