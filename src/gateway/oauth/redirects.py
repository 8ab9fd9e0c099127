"""Redirect URI rules: what may be registered, what matches, how to redirect.

Registration accepts https URLs and plain-http loopback URLs (RFC 8252
section 7.3), written with RFC 3986 characters only and without dot segments
in the path. At authorization a
redirect URI must equal a registered one, except that a loopback redirect URI
may use any port, because native clients listen on an ephemeral port
(RFC 8252 section 7.3).
"""

from __future__ import annotations

import ipaddress
import re
import string
from urllib.parse import (
    SplitResult,
    parse_qsl,
    quote,
    urlencode,
    urlsplit,
    urlunsplit,
)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
MAX_REDIRECT_URI_LENGTH = 2000

_URI_CHARACTERS = frozenset(
    string.ascii_letters + string.digits + "-._~" + ":/?#[]@" + "!$&'()*+,;=" + "%"
)
"""The unreserved, reserved and ``%`` characters of RFC 3986 section 2."""

_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def redirect_uri_problem(uri: str) -> str | None:
    """Return why ``uri`` cannot be registered, or None when it can.

    The reason names the URI percent-encoded, so it contains only the
    characters that RFC 6749 section 5.2 allows in ``error_description``.
    """
    if len(uri) > MAX_REDIRECT_URI_LENGTH:
        return f"redirect URI is longer than {MAX_REDIRECT_URI_LENGTH} characters"
    shown = f"'{display_uri(uri)}'"
    # URL parsers drop or rewrite some of these characters (Python's urlsplit
    # removes tabs and line breaks), so a URI that contains them could be
    # checked as one URL and used as another.
    if not _URI_CHARACTERS.issuperset(uri):
        return (
            f"redirect URI {shown} contains a character that RFC 3986 does not "
            "allow, such as a control character, a space or a non-ASCII "
            "character. Percent-encode such characters."
        )
    if _STRAY_PERCENT.search(uri):
        return (
            f"redirect URI {shown} contains a '%' that does not start a "
            "percent-encoded octet such as %2F"
        )
    if "*" in uri:
        return (
            f"redirect URI {shown} contains a wildcard '*'. Wildcards are not "
            "supported, so register every redirect URI in full."
        )
    parts = _split(uri)
    if parts is None or not parts.scheme or not parts.netloc:
        return f"redirect URI {shown} is not an absolute URL"
    if parts.fragment or "#" in uri:
        return f"redirect URI {shown} must not have a fragment"
    if "@" in parts.netloc:
        return f"redirect URI {shown} must not contain user information"
    if not _is_valid_host(parts):
        return (
            f"redirect URI {shown} has an invalid host; use a DNS name, an IPv4 "
            "address or an IPv6 address in brackets"
        )
    if has_dot_segment(parts.path):
        return (
            f"redirect URI {shown} must have a path without '.' or '..' segments, "
            "which URL normalisation would remove"
        )
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return None
    return (
        f"redirect URI {shown} must use https, or http on a loopback host "
        "(127.0.0.1, [::1] or localhost)"
    )


def has_dot_segment(path: str) -> bool:
    """Return whether a URL path has a ``.`` or ``..`` segment.

    Percent-encoded dots count too: RFC 3986 section 6.2.2.2 lets a
    normaliser decode ``%2E``, after which the segment is removed.
    """
    return any(
        segment.lower().replace("%2e", ".") in (".", "..")
        for segment in path.split("/")
    )


def display_uri(uri: str) -> str:
    """Return ``uri`` with every character outside RFC 3986 percent-encoded.

    The result is printable ASCII without quotes or backslashes, safe to put
    in an error message or a log line.
    """
    return quote(uri, safe="".join(sorted(_URI_CHARACTERS)))


def redirect_uri_matches(registered: list[str], requested: str) -> bool:
    """Return whether ``requested`` matches one of the ``registered`` URIs.

    The comparison is exact, except for a registered loopback http URI, where
    any port is accepted as long as scheme, host, path and query are equal.
    A requested URI that could not be registered matches nothing.
    """
    if redirect_uri_problem(requested) is not None:
        return False
    if requested in registered:
        return True
    parsed = _split(requested)
    if (
        parsed is None
        or parsed.scheme != "http"
        or not is_loopback_host(parsed.hostname)
    ):
        return False
    if parsed.fragment or "@" in parsed.netloc:
        return False
    for uri in registered:
        candidate = _split(uri)
        if candidate is None or candidate.scheme != "http":
            continue
        if (
            candidate.hostname == parsed.hostname
            and is_loopback_host(candidate.hostname)
            and candidate.path == parsed.path
            and candidate.query == parsed.query
        ):
            return True
    return False


def is_loopback_host(host: str | None) -> bool:
    """Return whether ``host`` (as ``urlsplit().hostname`` gives it) is loopback."""
    return host is not None and host.lower() in LOOPBACK_HOSTS


def with_query(uri: str, params: dict[str, str | None]) -> str:
    """Return ``uri`` with ``params`` added to its query; None values are left out."""
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query.extend((name, value) for name, value in params.items() if value is not None)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _is_valid_host(parts: SplitResult) -> bool:
    host = parts.hostname
    if not host:
        return False
    if "[" in parts.netloc:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    return all(_HOST_LABEL.fullmatch(label) for label in host.split("."))


def _split(uri: str) -> SplitResult | None:
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on an invalid port
    except ValueError:
        return None
    return parts
