"""Drive the official MCP client through sign-in and calls, acting as the browser.

The MCP SDK's ``OAuthClientProvider`` does discovery, dynamic registration,
PKCE and the token request. This driver does what a person's browser would:
it fetches the authorization URL with ``login_hint`` added, submits the
consent form and follows the redirects through the IdP. When the gateway
shows an error page with a "Return to" link instead of redirecting (an
error for a client it cannot verify), the driver follows the link, as the
person would click it. It takes the code or the error from the final URL,
the client's loopback ``redirect_uri``, so no server needs to listen there.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit, urlunsplit

import anyio
import httpx
import httpx2
from mcp.client import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)

REDIRECT_URI = "http://127.0.0.1:33418/callback"
_MAX_STEPS = 12


class SignInRefused(Exception):
    """The authorization server redirected back with an OAuth error."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description


class MemoryTokenStorage:
    """Keeps one client's registration and tokens in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        """Return the stored tokens."""
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        """Store tokens."""
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        """Return the stored registration."""
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        """Store a registration."""
        self.client_info = client_info


def pre_registered_storage(
    client_id: str, client_secret: str, *, client_name: str | None = None
) -> MemoryTokenStorage:
    """Return a storage holding a pre-registered confidential client.

    The official client then skips dynamic registration and authenticates
    at the token endpoint with HTTP Basic.
    """
    storage = MemoryTokenStorage()
    storage.client_info = OAuthClientInformationFull(
        client_id=client_id,
        client_secret=client_secret,
        client_name=client_name,
        redirect_uris=[REDIRECT_URI],  # type: ignore[list-item]
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
        token_endpoint_auth_method="client_secret_basic",
    )
    return storage


@dataclass
class BrowserDriver:
    """Plays the user's browser for one sign-in.

    Attributes:
        login_hint: The demo user to sign in as (``alice`` or ``bob``).
        approve: Whether to approve the consent page.
        visited: Every URL fetched, without query strings, for diagnostics.
    """

    login_hint: str = "alice"
    approve: bool = True
    visited: list[str] = field(default_factory=list)
    _result: AuthorizationCodeResult | None = None
    _error: SignInRefused | None = None

    async def redirect_handler(self, authorization_url: str) -> None:
        """Follow the authorization URL to the final redirect, as a browser would."""
        url = _add_query(authorization_url, {"login_hint": self.login_hint})
        method: str = "GET"
        data: dict[str, str] | None = None
        async with httpx.AsyncClient(timeout=10.0) as browser:
            for _ in range(_MAX_STEPS):
                self.visited.append(url.split("?", 1)[0])
                if url.startswith(REDIRECT_URI):
                    self._finish(url)
                    return
                response = await browser.request(method, url, data=data)
                method, data = "GET", None
                if response.is_redirect:
                    url = urljoin(url, response.headers["location"])
                    continue
                link = _RETURN_LINK.search(response.text)
                if link is not None:
                    url = urljoin(url, unescape(link.group(1)))
                    continue
                if response.status_code == 200 and "<form" in response.text:
                    url, data = _consent_submission(url, response.text, self.approve)
                    method = "POST"
                    continue
                msg = (
                    f"sign-in stopped at {url.split('?', 1)[0]} with HTTP "
                    f"{response.status_code}: {response.text[:300]}"
                )
                raise RuntimeError(msg)
        msg = f"sign-in did not reach {REDIRECT_URI} within {_MAX_STEPS} steps"
        raise RuntimeError(msg)

    def _finish(self, url: str) -> None:
        query = parse_qs(urlsplit(url).query)
        if "error" in query:
            self._error = SignInRefused(
                query["error"][0], query.get("error_description", [""])[0]
            )
            return
        self._result = AuthorizationCodeResult(
            code=query["code"][0],
            state=query.get("state", [None])[0],
            iss=query.get("iss", [None])[0],
        )

    async def callback_handler(self) -> AuthorizationCodeResult:
        """Return the code captured from the final redirect.

        Raises:
            SignInRefused: The redirect carried an OAuth error instead.
        """
        if self._error is not None:
            raise self._error
        if self._result is None:
            msg = "the sign-in produced no authorization code"
            raise RuntimeError(msg)
        return self._result


def _add_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = parts.query + ("&" if parts.query else "") + urlencode(params)
    return urlunsplit(parts._replace(query=query))


_FORM_ACTION = re.compile(r"<form[^>]*action=\"([^\"]+)\"")
_RETURN_LINK = re.compile(r"<a class=\"return\"[^>]*href=\"([^\"]+)\"")
_INPUT = re.compile(r"<input\b[^>]*>")
_ATTRIBUTE = re.compile(r"(\w+)=\"([^\"]*)\"")


def _consent_submission(
    page_url: str, html: str, approve: bool
) -> tuple[str, dict[str, str]]:
    form = _FORM_ACTION.search(html)
    if form is None:
        msg = f"the consent page at {page_url.split('?', 1)[0]} has no form action"
        raise RuntimeError(msg)
    fields: dict[str, str] = {}
    for tag in _INPUT.findall(html):
        attributes = dict(_ATTRIBUTE.findall(tag))
        if attributes.get("type") == "hidden" and "name" in attributes:
            fields[unescape(attributes["name"])] = unescape(attributes.get("value", ""))
    fields["decision"] = "approve" if approve else "deny"
    return urljoin(page_url, unescape(form.group(1))), fields


@dataclass
class CallReport:
    """The outcome of one client session.

    Attributes:
        tools: Tool names listed.
        results: Tool name to ``(is_error, text)`` for each call made.
        protocol_version: The version the session negotiated.
        progress: Progress values received during the calls.
        progress_at: ``time.monotonic()`` of each progress notification.
        returned_at: ``time.monotonic()`` when each call returned.
        session_id: The ``Mcp-Session-Id`` the gateway issued, if any.
    """

    tools: list[str] = field(default_factory=list)
    results: dict[str, tuple[bool, str]] = field(default_factory=dict)
    protocol_version: str | None = None
    progress: list[float] = field(default_factory=list)
    progress_at: list[float] = field(default_factory=list)
    returned_at: dict[str, float] = field(default_factory=dict)
    session_id: str | None = None


async def run_client(
    url: str,
    *,
    client_name: str,
    login_hint: str = "alice",
    calls: list[tuple[str, dict[str, Any]]],
    timeout: float = 30.0,
    storage: MemoryTokenStorage | None = None,
    mode: str = "auto",
    between_calls: Callable[[str, CallReport], Awaitable[None]] | None = None,
) -> CallReport:
    """Sign in with the official MCP client, then list tools and make ``calls``.

    A call the gateway refuses with a JSON-RPC error is recorded as
    ``(True, message)`` in the report instead of raising.

    Args:
        url: The MCP endpoint at the gateway.
        client_name: The DCR ``client_name``, which the demo maps to an agent.
        login_hint: The demo user to sign in as.
        calls: ``(tool, arguments)`` pairs to call after listing tools.
        timeout: Seconds for the whole session.
        storage: Where the registration and tokens are kept; pass one to
            read the tokens afterwards.
        mode: The official client's connect mode: ``auto`` (2026-07-28 when
            the server offers it), ``legacy`` (the ``initialize`` handshake
            at 2025-11-25) or ``2026-07-28``.
        between_calls: Awaited with each tool name and the report so far
            before that tool is called, so that a test can act between calls.

    Raises:
        SignInRefused: The gateway refused the sign-in (for example
            ``access_denied`` for an agent not allowed on the backend).
    """
    browser = BrowserDriver(login_hint=login_hint)
    auth = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name=client_name,
            redirect_uris=[REDIRECT_URI],  # type: ignore[list-item]
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage or MemoryTokenStorage(),
        redirect_handler=browser.redirect_handler,
        callback_handler=browser.callback_handler,
    )
    report = CallReport()

    async def record_session(response: httpx2.Response) -> None:
        session_id = response.headers.get("mcp-session-id")
        if session_id:
            report.session_id = session_id

    async def on_progress(
        progress: float, total: float | None, message: str | None
    ) -> None:
        report.progress.append(progress)
        report.progress_at.append(time.monotonic())

    with anyio.fail_after(timeout):
        try:
            async with httpx2.AsyncClient(
                auth=auth,
                timeout=httpx2.Timeout(30.0),
                event_hooks={"response": [record_session]},
            ) as http:
                transport = streamable_http_client(url, http_client=http)
                async with Client(transport, mode=mode) as client:
                    report.protocol_version = client.protocol_version
                    listed = await client.list_tools()
                    report.tools = [tool.name for tool in listed.tools]
                    for name, arguments in calls:
                        if between_calls is not None:
                            await between_calls(name, report)
                        report.results[name] = await _call(
                            client, name, arguments, on_progress
                        )
                        report.returned_at[name] = time.monotonic()
        except BaseException as exc:
            refused = _find(exc, SignInRefused)
            if refused is not None:
                raise refused from None
            raise
    return report


async def _call(
    client: Client, name: str, arguments: dict[str, Any], on_progress: Any
) -> tuple[bool, str]:
    from mcp import MCPError

    try:
        result: Any = await client.call_tool(
            name, arguments, progress_callback=on_progress
        )
    except MCPError as exc:
        return True, str(exc)
    return bool(result.is_error), _text(result)


def _text(result: Any) -> str:
    parts = [getattr(block, "text", "") for block in getattr(result, "content", [])]
    return "\n".join(part for part in parts if part)


def _find(exc: BaseException, kind: type[SignInRefused]) -> SignInRefused | None:
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        if current.__cause__ is not None:
            pending.append(current.__cause__)
        if current.__context__ is not None:
            pending.append(current.__context__)
    return None
