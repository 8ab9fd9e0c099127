"""Mapping an RFC 8707 ``resource`` value to one backend's canonical resource.

A backend's canonical resource is ``server.public_url`` + its path, byte for
byte. Clients may spell it differently in ways RFC 3986 section 6.2 treats as
equivalent: an upper-case scheme or host, the scheme's default port, or one
trailing slash. Those spellings map to the canonical string, which is the only
value ever put in a token's ``aud``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_resource(value: str) -> str | None:
    """Return a comparable form of a resource URL, or None if it cannot be one.

    Resource indicators are absolute URLs without a fragment (RFC 8707
    section 2); this also rejects a query, which no backend resource has.
    """
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or "#" in value:
        return None
    if parts.query or "@" in parts.netloc:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = parts.path[:-1] if parts.path.endswith("/") else parts.path
    return f"{scheme}://{netloc}{path}"


def backend_for_resource(config: GatewayConfig, value: str) -> tuple[str, str] | None:
    """Return ``(backend name, canonical resource)`` for a resource value.

    None means that no backend has that resource, even allowing for the
    equivalent spellings described in this module.
    """
    wanted = normalize_resource(value)
    if wanted is None:
        return None
    base = config.server.public_url
    for name, backend in config.backends.items():
        canonical = base + backend.path
        if value == canonical or normalize_resource(canonical) == wanted:
            return name, canonical
    return None


def backend_for_path(config: GatewayConfig, path: str) -> str | None:
    """Return the backend served at ``path``, allowing one trailing slash."""
    trimmed = path[:-1] if path.endswith("/") and len(path) > 1 else path
    for name, backend in config.backends.items():
        if backend.path in (path, trimmed):
            return name
    return None
