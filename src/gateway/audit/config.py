"""Settings of the audit stage and its sinks."""

from __future__ import annotations

from typing import Literal

import msgspec


class JsonlSinkConfig(
    msgspec.Struct,
    frozen=True,
    forbid_unknown_fields=True,
    tag="jsonl",
    tag_field="kind",
):
    """Write events as JSON lines to a file."""

    path: str = "audit.jsonl"
    """The file, relative to ``server.var_dir`` unless absolute."""
    fsync: bool = False
    """Whether to fsync after each batch (slower, survives power loss)."""


class StdoutSinkConfig(
    msgspec.Struct,
    frozen=True,
    forbid_unknown_fields=True,
    tag="stdout",
    tag_field="kind",
):
    """Write events as JSON lines to standard output."""


SinkConfig = JsonlSinkConfig | StdoutSinkConfig


class AuditConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Settings of the ``audit`` stage (``stages.audit``)."""

    sinks: list[SinkConfig] = msgspec.field(default_factory=lambda: [JsonlSinkConfig()])
    """Where events go; each sink delivers from its own journal."""
    journal_dir: str = "journal"
    """Directory of the journals, relative to ``server.var_dir``."""
    journal_max_pending: int = 10_000
    """Undelivered events per sink before requests wait (back-pressure)."""
    journal_fsync: Literal["always", "never"] = "never"
    """Whether each journal append is fsynced before the request continues."""
