"""Measure the gateway on streamed ``tools/call`` responses against the backend.

Usage: ``python bench/streaming.py [--calls N] [--concurrency C]
[--throughput-calls N] [--protocol VERSION] [--backend-protocol ERA] [--json]``
(``--help`` lists every option and its default).

It starts ``bench/_stack.py`` (the dev IdP, the demo backends and the
``progress`` backend) and the gateway (``python -m gateway run``) as child
processes on 127.0.0.1, as ``forward_overhead.py`` does. The ``progress``
backend is an official-SDK server that responds to every POST with an event
stream. Its tool ``count_with_progress`` sends progress 1 at once, the other
progress notifications ``--step-delay-ms`` apart, then the result.

It signs in once with the official MCP client as the ``cursor`` agent, then
opens one MCP session through the gateway and one directly to the backend
with its API key, in protocol 2025-11-25 (or, with ``--protocol
2026-07-28``, sends stateless requests). Both paths use the same client code:
an ``aiohttp.ClientSession`` opened beforehand, with a small event-stream
reader. ``--backend-protocol`` sets the gateway's ``protocol`` setting for
the backend. Its default, ``same``, makes the gateway reach the backend in the
era of ``--protocol``, as the direct path does, and ``auto`` measures the
gateway's default, which bridges a handshake-era client to this backend in
2026-07-28.

- Latency: ``--calls`` sequential calls per path over one keep-alive
  connection, the two paths taking turns in blocks. For each call it records
  the time to the first event (the first progress notification) and to the
  response. It prints the median and p95 of both.
- Throughput: ``--concurrency`` clients share the session and call the tool
  with no delay between progress notifications, until ``--throughput-calls``
  calls per path are done or ``--throughput-seconds`` per path have passed.
  The paths take turns in two rounds. It prints requests per second, and the
  CPU time per call of the gateway process and of the backend process
  (``/proc/<pid>/stat``, Linux only) and of this client process.

Each figure comes with its ratio gateway / direct. ``--max-seconds`` bounds
the whole measurement.
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
from pathlib import Path
from typing import Any

import anyio
import yaml
from _progress_backend import API_KEY, API_KEY_HEADER
from _sse_client import (
    HANDSHAKE_VERSION,
    PROTOCOL_VERSIONS,
    StreamSession,
    open_http,
)
from forward_overhead import (
    cpu_seconds,
    start_child,
    stop_child,
    wait_for_file,
    wait_for_gateway,
)

from gateway.demo.driver import MemoryTokenStorage, run_client

BENCH_DIR = Path(__file__).resolve().parent
BACKEND_PROTOCOLS = ("same", "auto", "handshake", "stateless")
BLOCK_CALLS = 50
THROUGHPUT_ROUNDS = 2


def percentile_95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


async def time_sequential(
    session: StreamSession, count: int, steps: int, delay_ms: float
) -> tuple[list[float], list[float]]:
    """Return the times to the first event and to the response, in ms."""
    first: list[float] = []
    final: list[float] = []
    for _ in range(count):
        timing = await session.call(steps, delay_ms)
        first.append(timing.first_event * 1000)
        final.append(timing.response * 1000)
    return first, final


async def run_concurrent(
    session: StreamSession, calls: int, clients: int, steps: int, seconds: float
) -> tuple[int, float]:
    """Run up to ``calls`` calls from ``clients`` tasks for at most ``seconds``.

    Returns the number of completed calls and the elapsed wall time in seconds.
    """
    started = 0
    completed = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal started, completed
        while started < calls and time.perf_counter() < deadline:
            started += 1
            await session.call(steps, 0.0)
            completed += 1

    begin = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(clients):
            group.start_soon(client)
    return completed, time.perf_counter() - begin


async def measure(
    urls: dict[str, Any], gateway_pid: int, stack_pid: int, args: argparse.Namespace
) -> dict[str, Any]:
    gateway_url = urls["gateway"] + "/progress/mcp"
    storage = MemoryTokenStorage()
    await run_client(gateway_url, client_name="cursor", calls=[], storage=storage)
    assert storage.tokens is not None
    token = storage.tokens.access_token
    result: dict[str, Any] = {
        "calls": args.calls,
        "steps": args.steps,
        "step_delay_ms": args.step_delay_ms,
        "concurrency": args.concurrency,
        "throughput_calls_limit": args.throughput_calls,
        "throughput_seconds_limit": args.throughput_seconds,
    }
    async with (
        open_http(args.concurrency) as direct_http,
        open_http(args.concurrency) as gateway_http,
    ):
        direct = StreamSession(
            direct_http,
            urls["progress"] + "/mcp",
            {API_KEY_HEADER: API_KEY},
            args.protocol,
        )
        through = StreamSession(
            gateway_http,
            gateway_url,
            {"authorization": f"Bearer {token}"},
            args.protocol,
        )
        paths = {"direct": direct, "gateway": through}
        for session in paths.values():
            await session.open()
            await time_sequential(session, args.warmup, args.steps, args.step_delay_ms)
            # Opens the pool's connections before anything is timed.
            await run_concurrent(
                session, 4 * args.concurrency, args.concurrency, args.steps, 10.0
            )

        first: dict[str, list[float]] = {name: [] for name in paths}
        final: dict[str, list[float]] = {name: [] for name in paths}
        while len(first["direct"]) < args.calls:
            block = min(BLOCK_CALLS, args.calls - len(first["direct"]))
            for name, session in paths.items():
                times = await time_sequential(
                    session, block, args.steps, args.step_delay_ms
                )
                first[name] += times[0]
                final[name] += times[1]

        completed = dict.fromkeys(paths, 0)
        elapsed = dict.fromkeys(paths, 0.0)
        backend_cpu = dict.fromkeys(paths, 0.0)
        client_cpu = dict.fromkeys(paths, 0.0)
        # The gateway's CPU time is read over the whole phase, so it includes
        # work its calls leave behind (audit delivery) during the direct turns.
        gateway_before = cpu_seconds(gateway_pid)
        for _ in range(THROUGHPUT_ROUNDS):
            for name, session in paths.items():
                stack_before = cpu_seconds(stack_pid)
                client_before = time.process_time()
                done, seconds = await run_concurrent(
                    session,
                    args.throughput_calls // THROUGHPUT_ROUNDS,
                    args.concurrency,
                    args.steps,
                    args.throughput_seconds / THROUGHPUT_ROUNDS,
                )
                completed[name] += done
                elapsed[name] += seconds
                backend_cpu[name] += cpu_seconds(stack_pid) - stack_before
                client_cpu[name] += time.process_time() - client_before
        gateway_cpu = cpu_seconds(gateway_pid) - gateway_before
        await direct.aclose()
        await through.aclose()

    for name in paths:
        result[f"{name}_first_event_median_ms"] = statistics.median(first[name])
        result[f"{name}_first_event_p95_ms"] = percentile_95(first[name])
        result[f"{name}_response_median_ms"] = statistics.median(final[name])
        result[f"{name}_response_p95_ms"] = percentile_95(final[name])
        result[f"{name}_throughput_calls"] = completed[name]
        result[f"{name}_requests_per_second"] = completed[name] / elapsed[name]
        result[f"{name}_backend_cpu_ms_per_call"] = (
            backend_cpu[name] * 1000 / completed[name]
        )
        result[f"{name}_client_cpu_ms_per_call"] = (
            client_cpu[name] * 1000 / completed[name]
        )
    result["gateway_cpu_ms_per_call"] = gateway_cpu * 1000 / completed["gateway"]
    for key in (
        "first_event_median_ms",
        "first_event_p95_ms",
        "response_median_ms",
        "response_p95_ms",
        "requests_per_second",
        "backend_cpu_ms_per_call",
        "client_cpu_ms_per_call",
    ):
        result[f"ratio_{key}"] = result[f"gateway_{key}"] / result[f"direct_{key}"]
    return result


ROWS = (
    ("first event, median", "first_event_median_ms", "ms"),
    ("first event, p95", "first_event_p95_ms", "ms"),
    ("response, median", "response_median_ms", "ms"),
    ("response, p95", "response_p95_ms", "ms"),
    ("requests per second", "requests_per_second", ""),
    ("backend CPU per call", "backend_cpu_ms_per_call", "ms"),
    ("client CPU per call", "client_cpu_ms_per_call", "ms"),
)


def print_report(result: dict[str, Any]) -> None:
    print(
        f"tools/call {result['tool']}, responses as event streams, 127.0.0.1, "
        f"protocol {result['protocol_version']}, chain: {result['pipeline']}"
    )
    print(f"the gateway's backend setting: protocol: {result['backend_protocol']}")
    print(
        f"latency: {result['calls']} sequential calls per path, one connection, "
        f"{result['steps']} progress notifications {result['step_delay_ms']:g} ms "
        "apart"
    )
    print(
        f"throughput: {result['concurrency']} concurrent clients, "
        f"{result['direct_throughput_calls']} direct and "
        f"{result['gateway_throughput_calls']} gateway calls, no delay"
    )
    print(f"{'':24}{'direct':>10}{'gateway':>10}{'ratio':>8}")
    for label, key, unit in ROWS:
        direct = result[f"direct_{key}"]
        gateway = result[f"gateway_{key}"]
        ratio = result[f"ratio_{key}"]
        name = f"{label} {unit}".strip()
        print(f"{name:24}{direct:10.2f}{gateway:10.2f}{ratio:8.2f}")
    cpu = result["gateway_cpu_ms_per_call"]
    print(f"{'gateway CPU per call ms':24}{'':10}{cpu:10.2f}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--calls", type=int, default=300, help="sequential timed calls per path")
    add("--warmup", type=int, default=30, help="untimed calls per path before timing")
    add("--steps", type=int, default=4, help="progress notifications per call")
    add(
        "--step-delay-ms",
        type=float,
        default=5.0,
        help="milliseconds between progress notifications in the latency phase",
    )

    add("--concurrency", type=int, default=8, help="concurrent clients per path")
    add(
        "--throughput-calls",
        type=int,
        default=2000,
        help="calls per path in the throughput phase, at most",
    )
    add(
        "--throughput-seconds",
        type=float,
        default=10.0,
        help="seconds per path in the throughput phase, at most",
    )
    add(
        "--max-seconds",
        type=float,
        default=90.0,
        help="seconds after which the run stops with an error",
    )

    add(
        "--protocol",
        choices=PROTOCOL_VERSIONS,
        default=PROTOCOL_VERSIONS[0],
        help="protocol revision the client speaks on both paths",
    )
    add(
        "--backend-protocol",
        choices=BACKEND_PROTOCOLS,
        default="same",
        help="the gateway's 'protocol' setting for the backend; 'same' is the "
        "era of --protocol, so both paths reach the backend in one era",
    )
    add("--json", action="store_true", help="print the figures as one JSON object")

    args = parser.parse_args()
    if args.calls < 20 or args.warmup < 0:
        parser.error("--calls must be at least 20 and --warmup at least 0")
    if not 1 <= args.steps <= 100 or not 0 <= args.step_delay_ms <= 1000:
        parser.error("--steps must be 1..100 and --step-delay-ms 0..1000")
    if args.concurrency < 1 or args.throughput_calls < 2 * THROUGHPUT_ROUNDS:
        parser.error(
            "--concurrency must be at least 1 and --throughput-calls at least 4"
        )
    if args.throughput_seconds <= 0 or args.max_seconds <= 0:
        parser.error("--throughput-seconds and --max-seconds must be positive")
    return args


async def measure_bounded(
    urls: dict[str, Any], gateway_pid: int, stack_pid: int, args: argparse.Namespace
) -> dict[str, Any]:
    try:
        with anyio.fail_after(args.max_seconds):
            return await measure(urls, gateway_pid, stack_pid, args)
    except TimeoutError as exc:
        msg = f"the measurement did not finish within --max-seconds {args.max_seconds}"
        raise RuntimeError(msg) from exc


def backend_protocol(args: argparse.Namespace) -> str:
    if args.backend_protocol != "same":
        return str(args.backend_protocol)
    return "handshake" if args.protocol == HANDSHAKE_VERSION else "stateless"


def set_backend_protocol(config_path: Path, protocol: str) -> None:
    document = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    document["backends"]["progress"]["protocol"] = protocol
    config_path.write_text(yaml.safe_dump(document, sort_keys=False), "utf-8")


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="agent-proxy-bench-") as tmp:
        out = Path(tmp)
        stack_log = out / "stack.log"
        gateway_log = out / "gateway.log"
        children: list[subprocess.Popen[bytes]] = []
        try:
            stack = start_child(
                [sys.executable, str(BENCH_DIR / "_stack.py"), str(out)], stack_log
            )
            children.append(stack)
            wait_for_file(out / "urls.json", stack, stack_log)
            urls = json.loads((out / "urls.json").read_text(encoding="utf-8"))
            set_backend_protocol(out / "gateway.yaml", backend_protocol(args))
            gateway_command = [sys.executable, "-m", "gateway", "--log-format"]
            gateway_command += ["json", "run", "--config", str(out / "gateway.yaml")]
            gateway = start_child(gateway_command, gateway_log)
            children.append(gateway)
            wait_for_gateway(urls["gateway"], gateway, gateway_log)
            result = anyio.run(measure_bounded, urls, gateway.pid, stack.pid, args)
        except RuntimeError as exc:
            print(f"streaming: {exc}", file=sys.stderr)
            for log in (stack_log, gateway_log):
                if log.exists():
                    print(f"--- {log.name}", file=sys.stderr)
                    print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
            return 1
        finally:
            for child in reversed(children):
                stop_child(child)
    result["tool"] = "count_with_progress"
    result["protocol_version"] = args.protocol
    result["backend_protocol"] = backend_protocol(args)
    result["pipeline"] = "demo"
    result["otel_sdk_disabled"] = os.environ.get("OTEL_SDK_DISABLED", "") == "true"
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
