"""The built-in stages and their registry."""

from __future__ import annotations

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
"""The seven stage names that every gateway has; the registry may hold more."""
OPTIONAL_STAGES = ("rate_limit", "redact")
"""Built-in stages that no default chain contains; add them to a pipeline."""
ENTRY_POINT_GROUP = "agent_proxy.stages"
"""The entry-point group through which installed packages add stage types."""


def builtin_registry() -> StageRegistry:
    """Return a registry with the built-in stages and installed plug-in stages.

    Plug-in packages register stages in the ``agent_proxy.stages`` entry-point
    group, loaded when a chain first names them. A plug-in cannot replace a
    built-in name: such a conflict, a name two packages share and an invalid
    name are listed in the registry's ``problems``, which chain planning
    reports as errors.
    """
    from gateway.stages.audit import AuditStage
    from gateway.stages.authenticate import AuthenticateStage
    from gateway.stages.authorize import AuthorizeStage
    from gateway.stages.exchange import ExchangeStage
    from gateway.stages.forward import ForwardStage
    from gateway.stages.identify_agent import IdentifyAgentStage
    from gateway.stages.rate_limit import RateLimitStage
    from gateway.stages.redact import RedactStage
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
            "rate_limit": RateLimitStage,
            "redact": RedactStage,
        }
    )
    registry.add_entry_points(ENTRY_POINT_GROUP)
    return registry
