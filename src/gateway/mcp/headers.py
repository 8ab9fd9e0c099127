"""HTTP header helpers of the MCP endpoint: decoding and ``Accept``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

JSON = "application/json"
EVENT_STREAM = "text/event-stream"


def read_headers(raw: Iterable[tuple[bytes, bytes]]) -> tuple[dict[str, str], int]:
    """Decode ASGI request headers.

    Names become lower-case and repeated headers are joined with ``", "`` as
    RFC 9110 section 5.3 allows for list-valued fields. Bytes are decoded as
    Latin-1, which maps every byte, so decoding cannot fail.

    Returns:
        The headers, and their size on the wire counted as ``name: value``
        plus four bytes per line.
    """
    headers: dict[str, str] = {}
    size = 0
    for raw_name, raw_value in raw:
        size += len(raw_name) + len(raw_value) + 4
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        previous = headers.get(name)
        headers[name] = value if previous is None else f"{previous}, {value}"
    return headers, size


def encode_headers(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """Encode response headers for an ASGI ``http.response.start`` message."""
    return [
        (name.encode("latin-1"), value.encode("latin-1"))
        for name, value in headers.items()
    ]


def accepts(accept: str | None, media_type: str) -> bool:
    """Return whether an ``Accept`` header value allows ``media_type``.

    The most specific matching media range decides (exact, then ``type/*``,
    then ``*/*``), and ``q=0`` on it excludes the type. A missing header
    accepts everything (RFC 9110 section 12.5.1).
    """
    if accept is None:
        return True
    main_type = media_type.split("/", 1)[0]
    specificity = {media_type: 3, f"{main_type}/*": 2, "*/*": 1}
    best = 0
    allowed = False
    for item in accept.split(","):
        media_range, _, parameters = item.partition(";")
        rank = specificity.get(media_range.strip().lower(), 0)
        if rank > best:
            best = rank
            allowed = _quality(parameters) > 0.0
    return allowed


def _quality(parameters: str) -> float:
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value.strip())
            except ValueError:
                return 1.0
    return 1.0
