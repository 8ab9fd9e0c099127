"""Measure what the gateway adds to a ``tools/call`` on its hot path.

Usage: ``python bench/forward_overhead.py [--calls N] [--warmup N] [--json]
[--pipeline STAGES]``

It starts two child processes on 127.0.0.1: ``bench/_stack.py`` (the dev IdP
and both demo backends, responding with JSON bodies) and the gateway itself
(``python -m gateway run`` with the demo config at those addresses). It signs
in once with the official MCP client as the ``cursor`` agent. It then opens
two MCP sessions with plain httpx, one through the gateway and one directly
to the ``partners`` backend with its API key, and times ``--calls`` sequential
``tools/call get_partner`` requests on each, over one keep-alive connection
per session, the two sessions taking turns in blocks of 100 calls.

That is the hot path of the gateway: a valid gateway token, a static backend
credential, a live session and a JSON answer. It prints the median and p95
latency of both, the median the gateway adds, their ratio, and the CPU time
the gateway process (and the backend process) used per timed call, read from
``/proc/<pid>/stat``. The gateway inherits this shell's environment and runs
with its default telemetry: spans are recorded, and exported only when an
``OTEL_EXPORTER_OTLP_*`` endpoint is set. ``OTEL_SDK_DISABLED=true`` turns
tracing off. ``--pipeline`` replaces the
demo chain, for example to measure it without ``audit``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx

from gateway.demo.driver import MemoryTokenStorage, run_client

BENCH_DIR = Path(__file__).resolve().parent
PROTOCOL_VERSION = "2025-11-25"
TOOL_CALL = {"name": "get_partner", "arguments": {"partner_id": "P-100"}}
START_TIMEOUT = 30.0
BLOCK_CALLS = 100
BUDGET_CPU_MS = 0.5
BUDGET_ADDED_MS = 1.0


@dataclass
class Timing:
    """Per-call latencies of one run, in milliseconds."""

    latencies: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p95(self) -> float:
        return statistics.quantiles(self.latencies, n=20, method="inclusive")[-1]


def cpu_seconds(pid: int) -> float:
    """Return user + system CPU time of a process and all its threads."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        # The command name in field 2 may contain spaces, so split after it.
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class Session:
    """An MCP session over one keep-alive httpx connection."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url = url
        self.client = httpx.AsyncClient(
            headers={
                **headers,
                "accept": "application/json, text/event-stream",
                "content-type": "application/json",
            },
            timeout=10.0,
            trust_env=False,
            limits=httpx.Limits(max_connections=1),
        )
        self.next_id = 0

    async def open(self) -> None:
        response = await self.post(
            "initialize",
            {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "forward-overhead-bench", "version": "1"},
            },
        )
        session_id = response.headers.get("mcp-session-id")
        if session_id:
            self.client.headers["mcp-session-id"] = session_id
        self.client.headers["mcp-protocol-version"] = PROTOCOL_VERSION
        notified = await self.client.post(
            self.url,
            content=json.dumps(
                {"jsonrpc": "2.0", "method": "notifications/initialized"}
            ),
        )
        if notified.status_code != 202:
            msg = f"notifications/initialized: HTTP {notified.status_code}"
            raise RuntimeError(msg)

    async def post(self, method: str, params: dict[str, Any]) -> httpx.Response:
        self.next_id += 1
        body = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        body["params"] = params
        response = await self.client.post(self.url, content=json.dumps(body))
        content_type = response.headers.get("content-type", "")
        if response.status_code != 200 or not content_type.startswith(
            "application/json"
        ):
            msg = (
                f"{method} at {self.url}: HTTP {response.status_code} "
                f"{content_type}: {response.text[:300]}"
            )
            raise RuntimeError(msg)
        message = response.json()
        if "result" not in message or message["result"].get("isError"):
            msg = f"{method} at {self.url} failed: {response.text[:300]}"
            raise RuntimeError(msg)
        return response

    async def time_calls(self, count: int) -> Timing:
        latencies: list[float] = []
        for _ in range(count):
            start = time.perf_counter()
            await self.post("tools/call", TOOL_CALL)
            latencies.append((time.perf_counter() - start) * 1000)
        return Timing(latencies)

    async def aclose(self) -> None:
        await self.client.aclose()


def start_child(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


def stop_child(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(timeout=10)


def wait_for_file(path: Path, child: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not path.exists():
        if child.poll() is not None:
            msg = f"bench/_stack.py exited with {child.returncode}; see {log}"
            raise RuntimeError(msg)
        if time.monotonic() > deadline:
            msg = f"{path.name} did not appear within {START_TIMEOUT} s; see {log}"
            raise RuntimeError(msg)
        time.sleep(0.05)


def wait_for_gateway(url: str, child: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if child.poll() is not None:
            msg = f"the gateway exited with {child.returncode}; see {log}"
            raise RuntimeError(msg)
        try:
            response = httpx.get(
                url + "/.well-known/oauth-authorization-server", trust_env=False
            )
            if response.status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            msg = f"the gateway did not start within {START_TIMEOUT} s; see {log}"
            raise RuntimeError(msg)
        time.sleep(0.1)


async def measure(
    urls: dict[str, Any], gateway_pid: int, stack_pid: int, calls: int, warmup: int
) -> dict[str, Any]:
    gateway_url = urls["gateway"] + "/partners/mcp"
    storage = MemoryTokenStorage()
    await run_client(gateway_url, client_name="cursor", calls=[], storage=storage)
    assert storage.tokens is not None
    through = Session(
        gateway_url, {"authorization": f"Bearer {storage.tokens.access_token}"}
    )
    direct = Session(
        urls["partners"] + "/mcp",
        {urls["partners_api_key_header"]: urls["partners_api_key"]},
    )
    try:
        await direct.open()
        await through.open()
        await direct.time_calls(warmup)
        await through.time_calls(warmup)

        # The two paths take turns in blocks, so a busy moment on a shared
        # machine slows both alike instead of one. The gateway is idle during
        # the direct blocks except for work that its calls left behind (audit
        # delivery), so its CPU time is read over the whole timed phase.
        direct_latencies: list[float] = []
        gateway_latencies: list[float] = []
        backend_direct = backend_through = 0.0
        gateway_before = cpu_seconds(gateway_pid)
        while len(direct_latencies) < calls:
            block = min(BLOCK_CALLS, calls - len(direct_latencies))
            backend_before = cpu_seconds(stack_pid)
            direct_latencies += (await direct.time_calls(block)).latencies
            backend_middle = cpu_seconds(stack_pid)
            gateway_latencies += (await through.time_calls(block)).latencies
            backend_after = cpu_seconds(stack_pid)
            backend_direct += backend_middle - backend_before
            backend_through += backend_after - backend_middle
        gateway_cpu = cpu_seconds(gateway_pid) - gateway_before
        direct_timing = Timing(direct_latencies)
        gateway_timing = Timing(gateway_latencies)
    finally:
        await direct.aclose()
        await through.aclose()
    return {
        "calls": calls,
        "warmup": warmup,
        "direct_median_ms": direct_timing.median,
        "direct_p95_ms": direct_timing.p95,
        "gateway_median_ms": gateway_timing.median,
        "gateway_p95_ms": gateway_timing.p95,
        "added_median_ms": gateway_timing.median - direct_timing.median,
        "ratio_median": gateway_timing.median / direct_timing.median,
        "gateway_cpu_ms_per_call": gateway_cpu * 1000 / calls,
        "backend_cpu_ms_per_call_direct": backend_direct * 1000 / calls,
        "backend_cpu_ms_per_call_through_gateway": backend_through * 1000 / calls,
    }


def print_report(result: dict[str, Any]) -> None:
    print(
        f"tools/call get_partner on partners, {result['calls']} sequential calls "
        f"after {result['warmup']} warm-up calls, one connection, 127.0.0.1"
    )
    tracing = "off" if result["otel_sdk_disabled"] else "on"
    print(f"chain: {result['pipeline']}; tracing {tracing}")
    print(f"{'':24}{'median ms':>12}{'p95 ms':>12}")
    for name in ("direct", "gateway"):
        median = result[f"{name}_median_ms"]
        p95 = result[f"{name}_p95_ms"]
        print(f"{name:24}{median:12.3f}{p95:12.3f}")
    added = result["added_median_ms"]
    cpu = result["gateway_cpu_ms_per_call"]
    print(f"added median latency    {added:8.3f} ms  (budget {BUDGET_ADDED_MS} ms)")
    print(f"ratio gateway / direct  {result['ratio_median']:8.2f}   (medians)")
    print(f"gateway CPU per call    {cpu:8.3f} ms  (budget {BUDGET_CPU_MS} ms)")
    print(
        "backend CPU per call    "
        f"{result['backend_cpu_ms_per_call_direct']:8.3f} ms direct, "
        f"{result['backend_cpu_ms_per_call_through_gateway']:.3f} ms through "
        "the gateway"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--calls", type=int, default=2000, help="timed calls per path (default: 2000)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=200,
        help="untimed calls per path before timing (default: 200)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the figures as one JSON object"
    )
    parser.add_argument(
        "--pipeline",
        metavar="STAGES",
        help="comma-separated chain to use instead of the demo's, such as "
        "authenticate,identify_agent,authorize,exchange,session,forward",
    )
    args = parser.parse_args()
    if args.calls < 20 or args.warmup < 0:
        parser.error("--calls must be at least 20 and --warmup at least 0")

    with tempfile.TemporaryDirectory(prefix="agent-proxy-bench-") as tmp:
        out = Path(tmp)
        stack_log = out / "stack.log"
        gateway_log = out / "gateway.log"
        children: list[subprocess.Popen[bytes]] = []
        try:
            stack_command = [sys.executable, str(BENCH_DIR / "_stack.py"), str(out)]
            if args.pipeline:
                stack_command.append(args.pipeline)
            stack = start_child(stack_command, stack_log)
            children.append(stack)
            wait_for_file(out / "urls.json", stack, stack_log)
            urls = json.loads((out / "urls.json").read_text(encoding="utf-8"))
            gateway = start_child(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "--log-format",
                    "json",
                    "run",
                    "--config",
                    str(out / "gateway.yaml"),
                ],
                gateway_log,
            )
            children.append(gateway)
            wait_for_gateway(urls["gateway"], gateway, gateway_log)
            result = anyio.run(
                measure, urls, gateway.pid, stack.pid, args.calls, args.warmup
            )
        except RuntimeError as exc:
            print(f"forward_overhead: {exc}", file=sys.stderr)
            for log in (stack_log, gateway_log):
                if log.exists():
                    print(f"--- {log.name}", file=sys.stderr)
                    print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
            return 1
        finally:
            for child in reversed(children):
                stop_child(child)
    result["pipeline"] = args.pipeline or "demo"
    result["otel_sdk_disabled"] = os.environ.get("OTEL_SDK_DISABLED", "") == "true"
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
