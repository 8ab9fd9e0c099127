"""Settings of the audit stage and its sinks (``stages.audit``).

Every sink is a durable bus subscriber with its own journal under
``server.var_dir``; the ``kind`` key selects the sink type.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
BatchSize = Annotated[int, msgspec.Meta(ge=1, le=10_000)]
MaxWait = Annotated[float, msgspec.Meta(ge=0, le=60)]


class _SinkConfig(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="kind",
):
    pass


class JsonlSinkConfig(_SinkConfig, frozen=True, tag="jsonl"):
    """Write events as JSON lines to a file, rotated by size.

    Rotation renames ``audit.jsonl`` to ``audit.jsonl.1``, ``.1`` to ``.2``
    and so on, deleting the file beyond ``backups``. The hash chain goes on
    across files: the first line of a new file refers to the last line of
    the one before.
    """

    path: str = "audit.jsonl"
    """The file, relative to ``server.var_dir`` unless absolute."""
    fsync: bool = False
    """Whether to fsync after each batch (slower, survives power loss)."""
    max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 100 * 1024 * 1024
    """Size in bytes at which the file is rotated; 0 never rotates."""
    backups: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 10
    """Rotated files kept (``audit.jsonl.1`` is the newest); older ones are deleted."""


class StdoutSinkConfig(_SinkConfig, frozen=True, tag="stdout"):
    """Write events as JSON lines to standard output."""


class OtlpSinkConfig(_SinkConfig, frozen=True, tag="otlp"):
    """Send events as OpenTelemetry log records over OTLP/HTTP (protobuf).

    Each record carries the event's fields as attributes, the whole event as
    its body, and the event's trace and span ids, so a log backend can join
    the record to its trace.
    """

    endpoint: str | None = None
    """The full logs URL (``http://collector:4318/v1/logs``); when unset,
    ``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``
    (plus ``/v1/logs``) as the OpenTelemetry SDK reads them, else
    ``http://localhost:4318/v1/logs``."""
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    """Extra request headers, such as an API key written ``${ENV_VAR}``."""
    timeout: PositiveFloat = 10.0
    """Seconds one export request may take, the exporter's own retries included."""
    max_batch: BatchSize = 512
    """Maximum number of events per export request."""
    max_wait: MaxWait = 1.0
    """Seconds an event may wait for others to fill a batch."""
    retry_initial: PositiveFloat = 0.5
    """Seconds before the first retry of a failed export; doubles per attempt."""
    retry_max: PositiveFloat = 60.0
    """Maximum wait between two retries, in seconds; retries never stop."""

    def __post_init__(self) -> None:
        if self.endpoint is not None:
            _check_http_url("endpoint", self.endpoint)


class WebhookSinkConfig(_SinkConfig, frozen=True, tag="webhook"):
    """POST batches of events as JSON, signed with HMAC-SHA256.

    The body is ``{"events": [...]}``. The header ``X-Agent-Proxy-Signature:
    t=<unix seconds>,v1=<hex>`` carries the HMAC-SHA256 with ``secret`` of
    the timestamp, a dot and the body. Any 2xx response acknowledges the
    batch; anything else is retried until it succeeds, so receivers
    de-duplicate by each event's ``id``.
    """

    url: str
    """The http or https URL that batches are POSTed to."""
    secret: Annotated[str, msgspec.Meta(min_length=16)]
    """The HMAC key, usually ``${ENV_VAR}``; at least 16 characters."""
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    """Extra request headers, such as an ``Authorization`` written ``${ENV_VAR}``."""
    timeout: PositiveFloat = 10.0
    """Seconds one POST may take before it counts as failed."""
    max_batch: BatchSize = 100
    """Maximum number of events per POST."""
    max_wait: MaxWait = 1.0
    """Seconds an event may wait for others to fill a batch."""
    retry_initial: PositiveFloat = 0.5
    """Seconds before the first retry of a failed POST; doubles per attempt."""
    retry_max: PositiveFloat = 60.0
    """Maximum wait between two retries, in seconds; retries never stop."""

    def __post_init__(self) -> None:
        _check_http_url("url", self.url)


SinkConfig = JsonlSinkConfig | StdoutSinkConfig | OtlpSinkConfig | WebhookSinkConfig


class AuditConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Settings of the ``audit`` stage (``stages.audit``)."""

    sinks: list[SinkConfig] = msgspec.field(default_factory=lambda: [JsonlSinkConfig()])
    """Where events go; each sink delivers from its own journal."""
    journal_dir: str = "journal"
    """Directory of the journals, relative to ``server.var_dir``."""
    journal_max_pending: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    """Undelivered events per sink before requests wait (back-pressure)."""
    journal_fsync: Literal["always", "never"] = "never"
    """Whether each journal append is fsynced before the request continues."""

    def __post_init__(self) -> None:
        # Two sinks appending to one file would interleave two hash chains.
        first_use: dict[str, int] = {}
        for index, sink in enumerate(self.sinks):
            if not isinstance(sink, JsonlSinkConfig):
                continue
            if sink.path in first_use:
                msg = (
                    f"sinks[{index}].path {sink.path!r} is already the path of "
                    f"sinks[{first_use[sink.path]}]; give each jsonl sink its own file"
                )
                raise ValueError(msg)
            first_use[sink.path] = index


def _check_http_url(key: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        msg = f"{key} {url!r} is not an http or https URL with a host"
        raise ValueError(msg)
