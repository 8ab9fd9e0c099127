"""Redirect URI rules: what may be registered, what matches, how to redirect.

Registration accepts https URLs and plain-http loopback URLs (RFC 8252
section 7.3). At authorization a redirect URI must equal a registered one,
except that a loopback redirect URI may use any port, because native clients
listen on an ephemeral port (RFC 8252 section 7.3).
"""

from __future__ import annotations

from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
MAX_REDIRECT_URI_LENGTH = 2000


def redirect_uri_problem(uri: str) -> str | None:
    """Return why ``uri`` cannot be registered, or None when it can."""
    if len(uri) > MAX_REDIRECT_URI_LENGTH:
        return f"redirect URI is longer than {MAX_REDIRECT_URI_LENGTH} characters"
    parts = _split(uri)
    if parts is None or not parts.scheme or not parts.netloc:
        return f"redirect URI {uri!r} is not an absolute URL"
    if parts.fragment or "#" in uri:
        return f"redirect URI {uri!r} must not have a fragment"
    if "@" in parts.netloc:
        return f"redirect URI {uri!r} must not contain user information"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return None
    return (
        f"redirect URI {uri!r} must use https, or http on a loopback host "
        "(127.0.0.1, [::1] or localhost)"
    )


def redirect_uri_matches(registered: list[str], requested: str) -> bool:
    """Return whether ``requested`` matches one of the ``registered`` URIs.

    The comparison is exact, except for a registered loopback http URI, where
    any port is accepted as long as scheme, host, path and query are equal.
    """
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


def _split(uri: str) -> SplitResult | None:
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on an invalid port
    except ValueError:
        return None
    return parts
