"""A small middleware-chain engine: stages, chains, typed events and a bus.

This package knows nothing about HTTP, MCP or OAuth. A host application
defines a context subclass, registers stage classes and builds chains from a
declaration such as the ``pipeline`` list of a YAML file.
"""

from pipeline.bus import EventBus, Sink
from pipeline.chain import Chain, ChainPlan, StageDeclaration, build_chain, plan_chain
from pipeline.context import Context, MissingFactError
from pipeline.errors import ChainConfigError, PipelineError, TerminalStageError
from pipeline.events import Event, event_union, new_event_id, utc_now
from pipeline.intent import IntentLog
from pipeline.journal import Journal
from pipeline.registry import (
    StageLookupError,
    StageOrigin,
    StageRef,
    StageRegistry,
    parse_ref,
    stage_type,
)
from pipeline.stage import BaseStage, Next, NoConfig, Stage
from pipeline.tracing import current_ids

__all__ = [
    "BaseStage",
    "Chain",
    "ChainConfigError",
    "ChainPlan",
    "Context",
    "Event",
    "EventBus",
    "IntentLog",
    "Journal",
    "MissingFactError",
    "Next",
    "NoConfig",
    "PipelineError",
    "Sink",
    "Stage",
    "StageDeclaration",
    "StageLookupError",
    "StageOrigin",
    "StageRef",
    "StageRegistry",
    "TerminalStageError",
    "build_chain",
    "current_ids",
    "event_union",
    "new_event_id",
    "parse_ref",
    "plan_chain",
    "stage_type",
    "utc_now",
]
