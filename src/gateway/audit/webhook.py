"""The ``webhook`` audit sink: signed, batched POSTs of events.

Each POST has the JSON body ``{"events": [record, ...]}``, where each
record is an audit event exactly as journaled (with its ``id`` and
``prev_hash``), and the header::

    X-Agent-Proxy-Signature: t=<unix seconds>,v1=<hex>

where ``<hex>`` is HMAC-SHA256 with the configured secret over the ASCII
timestamp, a ``.`` and the raw body. A retry signs again with a new
timestamp. Any 2xx response acknowledges the whole batch; a later batch may
repeat events of an unacknowledged one, so receivers de-duplicate by ``id``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence

import httpx
import structlog

from gateway.audit.config import WebhookSinkConfig
from pipeline.bus import RetryAfter

log = structlog.get_logger("gateway.audit")

SIGNATURE_HEADER = "X-Agent-Proxy-Signature"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE = 300
"""Seconds a signature's timestamp may differ from the receiver's clock."""

_USER_AGENT = "okta-agent-proxy-audit/1"


class WebhookDeliveryError(Exception):
    """A POST failed or got a response status other than 2xx."""


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """Return the signature header value for ``body`` sent at ``timestamp``."""
    message = str(timestamp).encode("ascii") + b"." + body
    digest = hmac.new(secret, message, hashlib.sha256).hexdigest()
    return f"t={timestamp},{SIGNATURE_VERSION}={digest}"


def verify_signature(
    secret: bytes,
    header: str,
    body: bytes,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """Check a signature header against the raw body, as a receiver does.

    Returns True when one ``v1`` value is the HMAC of the timestamp and
    body, and the timestamp is within ``tolerance`` seconds of ``now``.
    """
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == SIGNATURE_VERSION:
            signatures.append(value)
    if timestamp is None or not signatures:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).rpartition("=")[2]
    return any(hmac.compare_digest(expected, value) for value in signatures)


class WebhookSink:
    """POSTs each batch to the configured URL and succeeds only on a 2xx."""

    def __init__(self, config: WebhookSinkConfig, *, name: str) -> None:
        self.config = config
        self.name = name
        self._secret = config.secret.encode()
        self._client = httpx.AsyncClient(timeout=config.timeout)

    async def deliver(self, batch: Sequence[bytes]) -> None:
        """POST the batch; returns once the receiver responded with a 2xx.

        Raises:
            RetryAfter: The receiver responded 429 or 503 with ``Retry-After``.
            WebhookDeliveryError: The POST failed or got another status.
        """
        body = b'{"events":[' + b",".join(batch) + b"]}"
        headers = {
            **self.config.headers,
            "content-type": "application/json",
            "user-agent": _USER_AGENT,
            SIGNATURE_HEADER: sign(self._secret, int(time.time()), body),
        }
        url = self.config.url
        try:
            response = await self._client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            msg = f"POST {url} failed: {type(exc).__name__}: {exc}"
            raise WebhookDeliveryError(msg) from exc
        status = response.status_code
        if 200 <= status < 300:
            return
        msg = f"POST {url} got status {status}; the batch is sent again"
        delay = _retry_after(response)
        if delay is not None:
            raise RetryAfter(msg, delay)
        if status < 500 and status not in (408, 429):
            # A 4xx other than these will likely repeat, but dropping audit
            # events is never an option: the journal keeps them meanwhile.
            log.error("audit.webhook_rejected", sink=self.name, url=url, status=status)
        raise WebhookDeliveryError(msg)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


def _retry_after(response: httpx.Response) -> float | None:
    """Return the seconds of a numeric ``Retry-After`` on a 429 or 503."""
    if response.status_code not in (429, 503):
        return None
    value = response.headers.get("retry-after", "").strip()
    if not value.isdigit():
        return None
    return float(value)
