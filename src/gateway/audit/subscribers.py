"""Subscribing the configured audit sinks to the event bus."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.audit.chain import HashChain
from gateway.audit.config import (
    AuditConfig,
    JsonlSinkConfig,
    OtlpSinkConfig,
    SinkConfig,
    StdoutSinkConfig,
    WebhookSinkConfig,
)
from gateway.audit.otlp import OtlpSink
from gateway.audit.sinks import JsonlSink, StdoutSink
from gateway.audit.webhook import WebhookSink
from pipeline import EventBus, IntentLog, Journal, Sink


@dataclass(frozen=True)
class SinkPlan:
    """How one sink is subscribed.

    Attributes:
        name: The subscriber name, ``audit.<kind>.<index>``; it also names
            the journal file.
        sink: The destination.
        seed: The newest record already at the destination, where the hash
            chain goes on when the journal is new.
        batch_size: Maximum number of events per delivery.
        linger: Seconds an event may wait for others to fill a batch.
        retry_initial: Seconds before the first retry.
        retry_max: Maximum wait between retries, in seconds.
    """

    name: str
    sink: Sink
    seed: bytes | None = None
    batch_size: int = 100
    linger: float = 0.005
    retry_initial: float = 0.1
    retry_max: float = 30.0


def resolve(var_dir: Path, relative: str) -> Path:
    """Resolve a path under ``var_dir``; absolute paths stay as they are."""
    path = Path(relative)
    return path if path.is_absolute() else var_dir / path


def sink_plan(config: SinkConfig, index: int, var_dir: Path) -> SinkPlan:
    """Build the sink for one entry of ``stages.audit.sinks``."""
    name = f"audit.{config.__struct_config__.tag}.{index}"
    if isinstance(config, JsonlSinkConfig):
        jsonl = JsonlSink(
            resolve(var_dir, config.path),
            fsync=config.fsync,
            max_bytes=config.max_bytes,
            backups=config.backups,
        )
        return SinkPlan(name, jsonl, seed=jsonl.last_record())
    if isinstance(config, StdoutSinkConfig):
        return SinkPlan(name, StdoutSink())
    if isinstance(config, WebhookSinkConfig):
        return SinkPlan(
            name,
            WebhookSink(config, name=name),
            batch_size=config.max_batch,
            linger=config.max_wait,
            retry_initial=config.retry_initial,
            retry_max=config.retry_max,
        )
    assert isinstance(config, OtlpSinkConfig)
    return SinkPlan(
        name,
        OtlpSink(config, name=name),
        batch_size=config.max_batch,
        linger=config.max_wait,
        retry_initial=config.retry_initial,
        retry_max=config.retry_max,
    )


def subscribe_audit_sinks(
    bus: EventBus, settings: AuditConfig, var_dir: Path
) -> list[str]:
    """Subscribe every configured sink as a durable, hash-chained subscriber.

    Each sink gets its own journal, ``<journal_dir>/<name>.journal``, and its
    own hash chain, which goes on from the journal's newest record across
    restarts. The bus records each event's set of appends in
    ``<journal_dir>/audit.intent`` first, and a journal that lacks the
    newest entry of that set, because the process stopped between two
    appends, gets it here.

    Returns:
        The subscriber names, in configuration order.
    """
    journal_dir = resolve(var_dir, settings.journal_dir)
    names: list[str] = []
    for index, sink_config in enumerate(settings.sinks):
        plan = sink_plan(sink_config, index, var_dir)
        journal = Journal(
            journal_dir / f"{plan.name}.journal",
            max_pending=settings.journal_max_pending,
            fsync=settings.journal_fsync,
        )
        bus.subscribe_durable(
            plan.name,
            plan.sink,
            journal,
            batch_size=plan.batch_size,
            linger=plan.linger,
            encode=HashChain(plan.seed),
            retry_initial=plan.retry_initial,
            retry_max=plan.retry_max,
        )
        names.append(plan.name)
    if names:
        intent = IntentLog(journal_dir / "audit.intent", fsync=settings.journal_fsync)
        bus.attach_intent_log(intent)
    return names
