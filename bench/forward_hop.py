"""Measure the client CPU of one forward-hop POST with each HTTP client.

Usage: ``python bench/forward_hop.py [--calls N] [--warmup N]``

A child process serves a fixed 300-byte JSON-RPC response with uvicorn on
127.0.0.1, so the server's CPU is not counted. This process then sends
``--calls`` sequential POSTs over one keep-alive connection with each
client, reads each body and releases the connection, and reports the CPU
time of this process per call (``time.process_time``) and the median
latency:

- ``backend_client``: :class:`gateway.mcp.backend.BackendClient` as the
  gateway uses it, with a client span per call and a tracer provider that
  records spans but exports none (the gateway's default);
- ``httpx``: a pooled ``httpx.AsyncClient``, ``send(stream=True)``;
- ``httpx_transport``: httpx's connection pool called without the client;
- ``httpx_aiohttp``: ``httpx.AsyncClient`` over the ``httpx-aiohttp``
  transport (only when that package is installed);
- ``aiohttp``: ``aiohttp.ClientSession`` directly (only when installed).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from gateway.config import BackendConfig
from gateway.mcp.backend import BackendClient

RESPONSE_BODY = (
    b'{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":'
    b'"{\\"partner\\": {\\"partner_id\\": \\"P-100\\", \\"name\\": \\"Northwind '
    b'Logistics\\", \\"tier\\": \\"gold\\", \\"region\\": \\"EMEA\\"}}"}],'
    b'"structuredContent":{"partner":{"partner_id":"P-100","tier":"gold"}},'
    b'"isError":false}}'
)
REQUEST_BODY = (
    b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_partner",'
    b'"arguments":{"partner_id":"P-100"}}}'
)
REQUEST_HEADERS = {
    "accept-encoding": "identity",
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": "2025-11-25",
    "mcp-session-id": "0123456789abcdef0123456789abcdef",
    "x-api-key": "partners-dev-key",
}

SendOnce = Callable[[], Awaitable[bytes]]


async def fixed_response_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": RESPONSE_BODY})


def serve(port_file: str) -> None:
    from gateway.demo.serve import bind_socket, serve_app

    sock = bind_socket("127.0.0.1", 0)
    staging = Path(port_file + ".tmp")
    staging.write_text(str(sock.getsockname()[1]), encoding="ascii")
    staging.rename(port_file)

    async def run() -> None:
        await serve_app(fixed_response_app, sock=sock)

    anyio.run(run)


async def run_client(name: str, send_once: SendOnce, calls: int, warmup: int) -> None:
    for _ in range(warmup):
        await send_once()
    latencies: list[float] = []
    cpu_start = time.process_time()
    for _ in range(calls):
        start = time.perf_counter()
        body = await send_once()
        latencies.append((time.perf_counter() - start) * 1000)
        if body != RESPONSE_BODY:
            msg = f"{name}: unexpected response body {body[:80]!r}"
            raise RuntimeError(msg)
    cpu_ms = (time.process_time() - cpu_start) * 1000 / calls
    median = statistics.median(latencies)
    print(f"{name:18}{cpu_ms:12.3f}{median:12.3f}", flush=True)


async def measure_all(url: str, calls: int, warmup: int) -> None:
    print(f"{'client':18}{'CPU ms':>12}{'median ms':>12}")
    await measure_backend_client(url, calls, warmup)
    await measure_httpx(url, calls, warmup)
    await measure_httpx_transport(url, calls, warmup)
    if importlib.util.find_spec("httpx_aiohttp") is not None:
        await measure_httpx_aiohttp(url, calls, warmup)
    if importlib.util.find_spec("aiohttp") is not None:
        await measure_aiohttp(url, calls, warmup)


async def measure_backend_client(url: str, calls: int, warmup: int) -> None:
    client = BackendClient(BackendConfig(path="/bench/mcp", url=url))

    async def send_once() -> bytes:
        response = await client.send("POST", REQUEST_HEADERS, REQUEST_BODY)
        body = await response.aread()
        await response.aclose()
        return body

    try:
        await run_client("backend_client", send_once, calls, warmup)
    finally:
        await client.aclose()


async def measure_httpx(url: str, calls: int, warmup: int) -> None:
    async with httpx.AsyncClient(trust_env=False) as client:

        async def send_once() -> bytes:
            request = client.build_request(
                "POST", url, headers=REQUEST_HEADERS, content=REQUEST_BODY
            )
            response = await client.send(request, stream=True)
            body = await response.aread()
            await response.aclose()
            return body

        await run_client("httpx", send_once, calls, warmup)


async def measure_httpx_transport(url: str, calls: int, warmup: int) -> None:
    async with httpx.AsyncHTTPTransport(trust_env=False) as transport:
        target = httpx.URL(url)

        async def send_once() -> bytes:
            request = httpx.Request(
                "POST", target, headers=REQUEST_HEADERS, content=REQUEST_BODY
            )
            response = await transport.handle_async_request(request)
            body = await response.aread()
            await response.aclose()
            return body

        await run_client("httpx_transport", send_once, calls, warmup)


async def measure_httpx_aiohttp(url: str, calls: int, warmup: int) -> None:
    import aiohttp
    from httpx_aiohttp import AiohttpTransport

    session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
    transport = AiohttpTransport(client=session)
    async with httpx.AsyncClient(transport=transport, trust_env=False) as client:

        async def send_once() -> bytes:
            request = client.build_request(
                "POST", url, headers=REQUEST_HEADERS, content=REQUEST_BODY
            )
            response = await client.send(request, stream=True)
            body = await response.aread()
            await response.aclose()
            return body

        await run_client("httpx_aiohttp", send_once, calls, warmup)
    await session.close()


async def measure_aiohttp(url: str, calls: int, warmup: int) -> None:
    import aiohttp

    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
    ) as session:

        async def send_once() -> bytes:
            async with session.post(
                url, headers=REQUEST_HEADERS, data=REQUEST_BODY, allow_redirects=False
            ) as response:
                return await response.read()

        await run_client("aiohttp", send_once, calls, warmup)


def wait_for_port(port_file: Path, server: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 30
    while True:
        text = port_file.read_text(encoding="ascii") if port_file.exists() else ""
        if text:
            port = int(text)
            break
        if server.poll() is not None or time.monotonic() > deadline:
            msg = "the response server did not start"
            raise RuntimeError(msg)
        time.sleep(0.05)
    # The port is written before uvicorn listens; wait until it accepts.
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", trust_env=False)
            return port
        except httpx.TransportError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--calls", type=int, default=5000, help="timed calls per client"
    )
    parser.add_argument("--warmup", type=int, default=500, help="untimed calls first")
    parser.add_argument("--serve", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    trace.set_tracer_provider(TracerProvider())
    with tempfile.TemporaryDirectory(prefix="agent-proxy-bench-") as tmp:
        port_file = Path(tmp) / "port"
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port_file)],
            stdin=subprocess.DEVNULL,
        )
        try:
            port = wait_for_port(port_file, server)
            url = f"http://127.0.0.1:{port}/mcp"
            anyio.run(measure_all, url, args.calls, args.warmup)
        finally:
            server.terminate()
            server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
