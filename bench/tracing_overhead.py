"""Measure what tracing and audit cost on the gateway's hot path, as ratios.

Usage: ``python bench/tracing_overhead.py [--calls N] [--warmup N] [--rounds N]
[--json]``

It runs ``bench/forward_overhead.py`` (the hot path: ``tools/call
get_partner`` through the gateway and directly, see that script) once per
variant and round, each time with a fresh gateway. A variant is the chain,
with or without the ``audit`` stage, and one of three tracing settings:

- ``disabled``: ``OTEL_SDK_DISABLED=true``, so no OpenTelemetry at all. The
  gateway's metrics honour that variable too, so this also turns them off;
- ``off``: no exporter configured, as ``agent-proxy run`` starts by default.
  Spans get trace and span ids, which events, logs and backends receive,
  but are not recorded;
- ``on``: every span recorded and exported over OTLP/HTTP to a receiver in
  this process, which decodes the spans to count them and then drops them.

It prints the gateway CPU per call and the added median latency of each
variant, and the ratios tracing on / off (with and without audit) and audit
on / off (tracing off). Each child run is bounded by ``--child-timeout``
seconds, and runs go in rounds so that a busy moment on a shared machine
affects every variant alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

BENCH_DIR = Path(__file__).resolve().parent
NO_AUDIT = "authenticate,identify_agent,authorize,exchange,session,forward"


@dataclass(frozen=True)
class Variant:
    """One configuration of the gateway under test."""

    name: str
    tracing: str
    """``disabled``, ``off`` or ``on``, as the module docstring describes."""
    audit: bool


VARIANTS = (
    Variant("disabled", "disabled", audit=False),
    Variant("disabled+audit", "disabled", audit=True),
    Variant("off", "off", audit=False),
    Variant("off+audit", "off", audit=True),
    Variant("on", "on", audit=False),
    Variant("on+audit", "on", audit=True),
)


class SpanSink:
    """An OTLP/HTTP receiver that counts the spans it gets and keeps none.

    Other signals posted to it are accepted and dropped unread.
    """

    def __init__(self) -> None:
        self.spans = 0
        self.requests = 0
        self.lock = threading.Lock()
        self.endpoint = ""


@contextmanager
def span_sink() -> Iterator[SpanSink]:
    sink = SpanSink()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.path == "/v1/traces":
                request = ExportTraceServiceRequest.FromString(body)
                count = sum(
                    len(scope.spans)
                    for resource in request.resource_spans
                    for scope in resource.scope_spans
                )
                with sink.lock:
                    sink.spans += count
                    sink.requests += 1
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sink.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def child_environment(variant: Variant, sink: SpanSink) -> dict[str, str]:
    """Return this process's environment without OTEL_*, plus the variant's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if variant.tracing == "disabled":
        env["OTEL_SDK_DISABLED"] = "true"
    elif variant.tracing == "on":
        # Only traces: the generic OTEL_EXPORTER_OTLP_ENDPOINT would also turn
        # on the OTLP export of metrics. The default sampler records every
        # trace that starts at the gateway.
        env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = sink.endpoint + "/v1/traces"
    return env


def run_variant(
    variant: Variant, sink: SpanSink, args: argparse.Namespace
) -> dict[str, Any]:
    command = [
        sys.executable,
        str(BENCH_DIR / "forward_overhead.py"),
        "--json",
        "--calls",
        str(args.calls),
        "--warmup",
        str(args.warmup),
    ]
    if not variant.audit:
        command += ["--pipeline", NO_AUDIT]
    finished = subprocess.run(
        command,
        env=child_environment(variant, sink),
        capture_output=True,
        text=True,
        timeout=args.child_timeout,
        check=False,
    )
    if finished.returncode != 0:
        msg = (
            f"forward_overhead.py failed for variant {variant.name} "
            f"(exit {finished.returncode}): {finished.stderr[-2000:]}"
        )
        raise RuntimeError(msg)
    result: dict[str, Any] = json.loads(finished.stdout)
    return result


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Return the median CPU per call and added latency of each variant."""
    summary: dict[str, dict[str, float]] = {}
    for name, results in runs.items():
        summary[name] = {
            "gateway_cpu_ms_per_call": statistics.median(
                r["gateway_cpu_ms_per_call"] for r in results
            ),
            "added_median_ms": statistics.median(r["added_median_ms"] for r in results),
            "ratio_median": statistics.median(r["ratio_median"] for r in results),
        }
    return summary


def ratio(
    summary: dict[str, dict[str, float]], numerator: str, denominator: str
) -> dict[str, float]:
    """Return the CPU and added-latency ratios of two variants."""
    top, bottom = summary[numerator], summary[denominator]
    return {
        "cpu": top["gateway_cpu_ms_per_call"] / bottom["gateway_cpu_ms_per_call"],
        "added": top["added_median_ms"] / bottom["added_median_ms"],
    }


def print_report(summary: dict[str, dict[str, float]], result: dict[str, Any]) -> None:
    print(
        f"tools/call get_partner, {result['calls']} timed calls per run, "
        f"{result['rounds']} round(s), medians over the rounds"
    )
    base = summary["disabled"]
    print(
        f"{'variant':16}{'tracing':>9}{'audit':>7}{'CPU/call ms':>13}"
        f"{'x disabled':>12}{'added ms':>10}{'x disabled':>12}"
    )
    for variant in VARIANTS:
        row = summary[variant.name]
        cpu = row["gateway_cpu_ms_per_call"]
        added = row["added_median_ms"]
        audit = "on" if variant.audit else "off"
        print(
            f"{variant.name:16}{variant.tracing:>9}{audit:>7}"
            f"{cpu:13.3f}{cpu / base['gateway_cpu_ms_per_call']:12.2f}"
            f"{added:10.3f}{added / base['added_median_ms']:12.2f}"
        )
    labels = {
        "tracing_with_audit": "tracing on / off, audit on: ",
        "tracing_without_audit": "tracing on / off, audit off:",
        "audit": "audit on / off, tracing off:",
    }
    for key, label in labels.items():
        ratio = result["ratios"][key]
        print(f"{label} CPU {ratio['cpu']:.2f}, added latency {ratio['added']:.2f}")
    print(f"spans the receiver decoded: {result['spans_received']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--calls", type=int, default=1000, help="timed calls per path and run"
    )
    parser.add_argument(
        "--warmup", type=int, default=100, help="untimed calls per path and run"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs of every variant (default: 1)"
    )
    parser.add_argument(
        "--child-timeout",
        type=float,
        default=300.0,
        help="seconds after which one forward_overhead.py run is stopped",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the figures as one JSON object"
    )
    args = parser.parse_args()
    if args.calls < 20 or args.warmup < 0 or not 1 <= args.rounds <= 10:
        parser.error("--calls must be at least 20, --warmup at least 0, --rounds 1-10")

    runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in VARIANTS}
    with span_sink() as sink:
        try:
            for _ in range(args.rounds):
                for variant in VARIANTS:
                    runs[variant.name].append(run_variant(variant, sink, args))
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"tracing_overhead: {exc}", file=sys.stderr)
            return 1
        spans_received = sink.spans
    summary = summarize(runs)
    result: dict[str, Any] = {
        "calls": args.calls,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "variants": summary,
        "ratios": {
            "tracing_with_audit": ratio(summary, "on+audit", "off+audit"),
            "tracing_without_audit": ratio(summary, "on", "off"),
            "audit": ratio(summary, "off+audit", "off"),
        },
        "spans_received": spans_received,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(summary, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
