"""A small MCP client over aiohttp that times event-stream responses.

It is for ``streaming.py``, which calls a backend directly and through the
gateway with this same code, so the client's own cost is equal on both
paths. It speaks either protocol 2025-11-25, with ``initialize`` and a
session, or the stateless revision 2026-07-28, which puts the protocol
version and client capabilities in each request's ``_meta`` and the method
and tool name in the ``Mcp-Method`` and ``Mcp-Name`` headers. Each request is
one POST. The response to a ``tools/call`` must be an event stream, and the
response to another request may also be one JSON body.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from _progress_backend import TOOL_NAME

HANDSHAKE_VERSION = "2025-11-25"
STATELESS_VERSION = "2026-07-28"
PROTOCOL_VERSIONS = (HANDSHAKE_VERSION, STATELESS_VERSION)
REQUEST_TIMEOUT = 30.0


@dataclass(frozen=True)
class CallTiming:
    """Seconds from sending a request to its first event and to its response."""

    first_event: float
    response: float


@contextlib.asynccontextmanager
async def open_http(connections: int) -> AsyncIterator[aiohttp.ClientSession]:
    """Yield an HTTP client with up to ``connections`` keep-alive connections."""
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, trust_env=False
    ) as http:
        yield http


def _events(lines: list[bytes]) -> list[dict[str, Any]]:
    data = [line[5:].lstrip(b" ") for line in lines if line.startswith(b"data:")]
    if not data:
        return []
    message = json.loads(b"\n".join(data))
    if not isinstance(message, dict):
        msg = f"an event carries a non-object message: {message!r:.200}"
        raise RuntimeError(msg)
    return [message]


class StreamSession:
    """One MCP session at ``url``; concurrent calls share it.

    Args:
        http: The HTTP client, opened by :func:`open_http`.
        url: The MCP endpoint.
        headers: Credential headers sent with every request.
        version: ``2025-11-25`` or ``2026-07-28``.
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        url: str,
        headers: dict[str, str],
        version: str = HANDSHAKE_VERSION,
    ) -> None:
        if version not in PROTOCOL_VERSIONS:
            msg = f"unsupported protocol version {version!r}"
            raise ValueError(msg)
        self.http = http
        self.url = url
        self.version = version
        self.headers = {
            **headers,
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
        }
        self._ids = itertools.count(1)

    async def open(self) -> None:
        """Send ``initialize`` and ``notifications/initialized`` (2025-11-25 only).

        In 2026-07-28 there is nothing to open: every request is independent.

        Raises:
            RuntimeError: The endpoint failed either step.
        """
        if self.version == STATELESS_VERSION:
            self.headers["mcp-protocol-version"] = STATELESS_VERSION
            return
        params = {
            "protocolVersion": HANDSHAKE_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "streaming-bench", "version": "1"},
        }
        session_id = await self._initialize(params)
        if session_id:
            self.headers["mcp-session-id"] = session_id
        self.headers["mcp-protocol-version"] = HANDSHAKE_VERSION
        body = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        async with self.http.post(
            self.url, data=json.dumps(body), headers=self.headers
        ) as response:
            await response.read()
            if response.status != 202:
                msg = f"notifications/initialized at {self.url}: HTTP {response.status}"
                raise RuntimeError(msg)

    async def _initialize(self, params: dict[str, Any]) -> str | None:
        request_id = next(self._ids)
        body = {"jsonrpc": "2.0", "id": request_id, "method": "initialize"}
        body["params"] = params
        async with self.http.post(
            self.url, data=json.dumps(body), headers=self.headers
        ) as response:
            await self._read_response(response, request_id, "initialize")
            return response.headers.get("mcp-session-id")

    async def call(self, steps: int, delay_ms: float) -> CallTiming:
        """Call the progress tool and time its first event and its response.

        Raises:
            RuntimeError: The response was not an event stream that starts with a
                progress notification and ends with a successful result.
        """
        request_id = next(self._ids)
        meta: dict[str, Any] = {"progressToken": request_id}
        headers = self.headers
        if self.version == STATELESS_VERSION:
            meta["io.modelcontextprotocol/protocolVersion"] = STATELESS_VERSION
            meta["io.modelcontextprotocol/clientCapabilities"] = {}
            headers = {**headers, "mcp-method": "tools/call", "mcp-name": TOOL_NAME}
        body = {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {
                "name": TOOL_NAME,
                "arguments": {"steps": steps, "delay_ms": delay_ms},
                "_meta": meta,
            },
        }
        start = time.perf_counter()
        async with self.http.post(
            self.url, data=json.dumps(body), headers=headers
        ) as response:
            first, done = await self._read_response(response, request_id, "tools/call")
        return CallTiming(first - start, done - start)

    async def _read_response(
        self, response: aiohttp.ClientResponse, request_id: int, method: str
    ) -> tuple[float, float]:
        # Returns perf_counter() at the first event and at the response. The
        # stream is read to its end so that the connection can be reused.
        content_type = response.headers.get("content-type", "")
        is_stream = content_type.startswith("text/event-stream")
        is_json = content_type.startswith("application/json")
        if response.status != 200 or not (
            is_stream or (is_json and method != "tools/call")
        ):
            text = (await response.read())[:300].decode(errors="replace")
            msg = f"{method} at {self.url}: HTTP {response.status} {content_type}"
            raise RuntimeError(f"{msg}: {text}")

        if is_json:
            message = json.loads(await response.read())
            _check_result(message, request_id, f"{method} at {self.url}")
            now = time.perf_counter()
            return now, now

        first_at: float | None = None
        rpc_response: dict[str, Any] | None = None
        response_at = 0.0
        lines: list[bytes] = []
        async for raw in response.content:
            line = raw.rstrip(b"\r\n")
            if line:
                lines.append(line)
                continue
            for message in _events(lines):
                now = time.perf_counter()
                if first_at is None:
                    first_at = now
                    if method == "tools/call":
                        _check_progress(message, request_id)
                if message.get("id") == request_id:
                    rpc_response, response_at = message, now
            lines = []

        if first_at is None or rpc_response is None:
            msg = f"{method} at {self.url}: the event stream ended without a response"
            raise RuntimeError(msg)
        _check_result(rpc_response, request_id, f"{method} at {self.url}")
        return first_at, response_at

    async def aclose(self) -> None:
        """End the session with DELETE; errors are ignored."""
        if "mcp-session-id" not in self.headers:
            return
        with contextlib.suppress(aiohttp.ClientError):
            async with self.http.delete(self.url, headers=self.headers) as response:
                await response.read()


def _check_result(rpc_response: Any, request_id: int, request: str) -> None:
    if not isinstance(rpc_response, dict) or rpc_response.get("id") != request_id:
        msg = f"{request}: not this request's response: {rpc_response!r:.300}"
        raise RuntimeError(msg)
    result = rpc_response.get("result")
    if not isinstance(result, dict) or result.get("isError"):
        msg = f"{request} failed: {json.dumps(rpc_response)[:300]}"
        raise RuntimeError(msg)


def _check_progress(message: dict[str, Any], request_id: int) -> None:
    params = message.get("params") or {}
    if (
        message.get("method") != "notifications/progress"
        or params.get("progressToken") != request_id
    ):
        msg = f"the first event is not this call's progress: {message!r:.300}"
        raise RuntimeError(msg)
