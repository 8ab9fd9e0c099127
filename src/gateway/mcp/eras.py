"""The two eras of the MCP protocol: versions, the 2026-07-28 envelope, routing headers.

Clients and backends speak one of two eras. The handshake era (2024-11-05 to
2025-11-25) opens a session with ``initialize`` and carries
``Mcp-Session-Id``. The stateless era (2026-07-28) has neither: every request
carries the protocol version, the client's capabilities and optionally its
info as ``params._meta`` keys (the envelope), and repeats the method and the
name of the tool, prompt or resource in the ``Mcp-Method`` and ``Mcp-Name``
headers, which must agree with the body.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

HANDSHAKE_VERSIONS: Final = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
"""Revisions that open a session with ``initialize``, oldest first."""
STATELESS_VERSIONS: Final = ("2026-07-28",)
"""Revisions without ``initialize`` and sessions."""
SUPPORTED_VERSIONS: Final = (*HANDSHAKE_VERSIONS, *STATELESS_VERSIONS)
LATEST_HANDSHAKE_VERSION: Final = HANDSHAKE_VERSIONS[-1]
LATEST_STATELESS_VERSION: Final = STATELESS_VERSIONS[-1]
DEFAULT_HANDSHAKE_VERSION: Final = "2025-03-26"
"""The version a server assumes when a handshake-era request has no header."""

PROTOCOL_VERSION_KEY: Final = "io.modelcontextprotocol/protocolVersion"
CLIENT_CAPABILITIES_KEY: Final = "io.modelcontextprotocol/clientCapabilities"
CLIENT_INFO_KEY: Final = "io.modelcontextprotocol/clientInfo"
SERVER_INFO_KEY: Final = "io.modelcontextprotocol/serverInfo"
ENVELOPE_KEYS: Final = (PROTOCOL_VERSION_KEY, CLIENT_CAPABILITIES_KEY, CLIENT_INFO_KEY)

VERSION_HEADER: Final = "mcp-protocol-version"
METHOD_HEADER: Final = "mcp-method"
NAME_HEADER: Final = "mcp-name"
PARAM_HEADER_PREFIX: Final = "mcp-param-"
ROUTING_HEADERS: Final = frozenset({VERSION_HEADER, METHOD_HEADER, NAME_HEADER})

NAME_PARAMS: Final[Mapping[str, str]] = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
}
"""Methods whose ``Mcp-Name`` header mirrors a param, and which param."""

CACHEABLE_METHODS: Final = frozenset(
    {
        "server/discover",
        "tools/list",
        "prompts/list",
        "resources/list",
        "resources/templates/list",
        "resources/read",
    }
)
"""Methods whose 2026-07-28 results must carry ``ttlMs`` and ``cacheScope``."""

HEADER_MISMATCH: Final = -32020
"""JSON-RPC error of 2026-07-28 for routing headers that disagree with the body."""
UNSUPPORTED_PROTOCOL_VERSION: Final = -32022
"""JSON-RPC error for a protocol version the server does not serve."""
INVALID_PARAMS: Final = -32602

Era = Literal["handshake", "stateless"]

_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_BASE64_WRAPPED = re.compile(r"=\?base64\?(?P<payload>[^?]*)\?=")


def era_of(version: str | None) -> Era:
    """Return the era of an ``MCP-Protocol-Version`` value; None is handshake."""
    return "stateless" if version in STATELESS_VERSIONS else "handshake"


def encode_header_value(value: str) -> str:
    """Return ``value`` as an HTTP field value that survives the trip intact.

    Printable ASCII without surrounding whitespace is sent as it is; anything
    else is UTF-8, base64-encoded and wrapped as ``=?base64?...?=``, the form
    2026-07-28 defines for ``Mcp-Name``.
    """
    if (
        _PRINTABLE.fullmatch(value)
        and value == value.strip()
        and not _BASE64_WRAPPED.fullmatch(value)
    ):
        return value
    return f"=?base64?{base64.b64encode(value.encode()).decode('ascii')}?="


def decode_header_value(value: str | None) -> str | None:
    """Undo :func:`encode_header_value`; a malformed wrapped value gives None."""
    if value is None:
        return None
    match = _BASE64_WRAPPED.fullmatch(value)
    if match is None:
        return value
    payload = match.group("payload")
    try:
        raw = base64.b64decode(payload, validate=True)
        if base64.b64encode(raw).decode("ascii") != payload:
            return None
        return raw.decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def duplicated_routing_header(raw: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Return the routing header sent more than once, or None.

    Readers that keep the first and the last copy would disagree on such a
    request, so it is rejected before the headers are joined.
    """
    seen: set[str] = set()
    for raw_name, _ in raw:
        name = raw_name.decode("latin-1").lower()
        if name in ROUTING_HEADERS:
            if name in seen:
                return name
            seen.add(name)
    return None


@dataclass(frozen=True, slots=True)
class Envelope:
    """The per-request fields of a 2026-07-28 request.

    Attributes:
        protocol_version: The version the request is sent at.
        client_capabilities: The client's capabilities, as sent.
        client_info: The client's name and version, or None when not sent.
    """

    protocol_version: str
    client_capabilities: Any
    client_info: Any = None

    def meta(self) -> dict[str, Any]:
        """Return the envelope as ``params._meta`` keys."""
        meta = {
            PROTOCOL_VERSION_KEY: self.protocol_version,
            CLIENT_CAPABILITIES_KEY: self.client_capabilities,
        }
        if self.client_info is not None:
            meta[CLIENT_INFO_KEY] = self.client_info
        return meta


@dataclass(frozen=True, slots=True)
class EnvelopeError(Exception):
    """A 2026-07-28 request whose envelope or routing headers are wrong.

    Attributes:
        code: The JSON-RPC error code.
        reason: The stable ``data.reason`` of the error.
        detail: What is wrong, for the client.
        data: More error data, such as the supported versions.
    """

    code: int
    reason: str
    detail: str
    data: dict[str, Any] | None = None


def read_envelope(
    method: str | None, params: Mapping[str, Any], headers: Mapping[str, str]
) -> Envelope:
    """Check a 2026-07-28 request's envelope against its headers and return it.

    The checks run in the order the revision gives, and the first failure is
    raised: the envelope keys are present, the capabilities and the client
    info are objects (-32602), ``MCP-Protocol-Version``,
    ``Mcp-Method`` and, for the methods in :data:`NAME_PARAMS`, ``Mcp-Name``
    equal the body (-32020), and the version is served (-32022).

    Raises:
        EnvelopeError: The first check that failed.
    """
    meta = params.get("_meta")
    if not isinstance(meta, Mapping):
        raise EnvelopeError(
            INVALID_PARAMS,
            "missing_envelope",
            f"Invalid params: params._meta must be an object with "
            f"{PROTOCOL_VERSION_KEY!r} and {CLIENT_CAPABILITIES_KEY!r}",
        )
    missing = [
        k for k in (PROTOCOL_VERSION_KEY, CLIENT_CAPABILITIES_KEY) if k not in meta
    ]
    if missing:
        raise EnvelopeError(
            INVALID_PARAMS,
            "missing_envelope",
            f"Invalid params: params._meta lacks {', '.join(missing)}",
        )
    version = meta[PROTOCOL_VERSION_KEY]
    capabilities = meta[CLIENT_CAPABILITIES_KEY]
    info = meta.get(CLIENT_INFO_KEY)
    if not isinstance(capabilities, Mapping) or not (
        info is None or isinstance(info, Mapping)
    ):
        raise EnvelopeError(
            INVALID_PARAMS,
            "missing_envelope",
            f"Invalid params: {CLIENT_CAPABILITIES_KEY!r} and "
            f"{CLIENT_INFO_KEY!r} in params._meta must be objects",
        )
    if headers.get(VERSION_HEADER) != version:
        raise _mismatch("MCP-Protocol-Version", "the envelope's protocol version")
    if headers.get(METHOD_HEADER) != method:
        raise _mismatch("Mcp-Method", "the body's method")
    name_param = NAME_PARAMS.get(method or "")
    if name_param is not None:
        body_name = params.get(name_param)
        sent = decode_header_value(headers.get(NAME_HEADER))
        if body_name is not None and sent != body_name:
            raise _mismatch("Mcp-Name", f"the body's {name_param!r}")
    if version not in STATELESS_VERSIONS:
        raise EnvelopeError(
            UNSUPPORTED_PROTOCOL_VERSION,
            "unsupported_protocol_version",
            "Unsupported protocol version in params._meta",
            {"supported": list(SUPPORTED_VERSIONS), "requested": version},
        )
    return Envelope(
        protocol_version=version, client_capabilities=capabilities, client_info=info
    )


def _mismatch(header: str, what: str) -> EnvelopeError:
    return EnvelopeError(
        HEADER_MISMATCH,
        "header_mismatch",
        f"Header mismatch: the {header} header does not match {what}",
    )


def without_envelope(params: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``params`` without the envelope keys, for a handshake-era backend.

    Other ``_meta`` keys (``progressToken``, trace context) stay; an emptied
    ``_meta`` is removed.
    """
    result = dict(params)
    meta = result.get("_meta")
    if isinstance(meta, Mapping):
        rest = {k: v for k, v in meta.items() if k not in ENVELOPE_KEYS}
        if rest:
            result["_meta"] = rest
        else:
            del result["_meta"]
    return result


def with_envelope(params: Mapping[str, Any], envelope: Envelope) -> dict[str, Any]:
    """Return ``params`` with the envelope in ``_meta``, for a 2026-07-28 backend."""
    result = dict(params)
    meta = result.get("_meta")
    merged = dict(meta) if isinstance(meta, Mapping) else {}
    merged.update(envelope.meta())
    result["_meta"] = merged
    return result


def routing_headers(
    method: str, params: Mapping[str, Any], version: str
) -> dict[str, str]:
    """Return the 2026-07-28 routing headers of a request to a backend."""
    headers = {VERSION_HEADER: version, METHOD_HEADER: method}
    name_param = NAME_PARAMS.get(method)
    value = params.get(name_param) if name_param is not None else None
    if isinstance(value, str):
        headers[NAME_HEADER] = encode_header_value(value)
    return headers


def as_stateless_result(method: str | None, result: dict[str, Any]) -> dict[str, Any]:
    """Return a handshake-era result with the fields 2026-07-28 requires.

    Adds ``resultType: complete``, and for :data:`CACHEABLE_METHODS`
    ``ttlMs: 0`` and ``cacheScope: private``: the gateway filters results
    per user, so no client may cache one for others or reuse it later.
    """
    fixed = dict(result)
    fixed.setdefault("resultType", "complete")
    if method in CACHEABLE_METHODS:
        fixed.setdefault("ttlMs", 0)
        fixed.setdefault("cacheScope", "private")
    return fixed


STATELESS_RESULT_FIELDS: Final = ("resultType", "ttlMs", "cacheScope")
"""Result fields that only 2026-07-28 defines."""
PUSHED_CAPABILITIES: Final = ("listChanged", "subscribe")
"""Capability flags that promise notifications a 2026-07-28 server pushes only
on a ``subscriptions/listen`` stream."""


def as_handshake_result(result: dict[str, Any]) -> dict[str, Any]:
    """Return a 2026-07-28 result without the fields handshake clients lack.

    Removes :data:`STATELESS_RESULT_FIELDS` and the ``serverInfo`` stamp in
    ``_meta`` (an emptied ``_meta`` is removed too).
    """
    fixed = {k: v for k, v in result.items() if k not in STATELESS_RESULT_FIELDS}
    meta = fixed.get("_meta")
    if isinstance(meta, Mapping) and SERVER_INFO_KEY in meta:
        rest = {k: v for k, v in meta.items() if k != SERVER_INFO_KEY}
        if rest:
            fixed["_meta"] = rest
        else:
            del fixed["_meta"]
    return fixed


def without_pushed_capabilities(capabilities: Mapping[str, Any]) -> dict[str, Any]:
    """Return server capabilities without the flags of pushed notifications.

    A handshake-era client of a 2026-07-28 backend has no stream on which
    the gateway could deliver ``list_changed`` or resource updates, so the
    gateway must not advertise them.
    """
    fixed: dict[str, Any] = {}
    for name, value in capabilities.items():
        if isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k not in PUSHED_CAPABILITIES}
        fixed[name] = value
    return fixed
