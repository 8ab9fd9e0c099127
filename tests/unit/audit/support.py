"""Chained audit records built from real gateway events, for the audit tests."""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.audit.chain import HashChain
from gateway.audit.cli import add_audit_commands, run_audit
from gateway.events import AccessDenied, AccessGranted, AgentRef, UserRef


def make_records(count: int, *, seed: bytes | None = None) -> list[bytes]:
    """Return ``count`` chained records alternating grants and denials."""
    chain = HashChain(seed)
    records: list[bytes] = []
    previous: bytes | None = None
    for n in range(count):
        user = UserRef(iss="https://idp.test", sub="alice" if n % 2 else "bob")
        agent = AgentRef(
            id="cursor" if n % 3 else "claude-code", verified=True, trust="registered"
        )
        event = (
            AccessDenied(
                detail=f"tool {n} is denied",
                outcome="denied",
                reason="tool_denied",
                user=user,
                agent=agent,
                backend="employees",
                method="tools/call",
                tool=f"tool_{n}",
            )
            if n % 2
            else AccessGranted(
                rule="agents.cursor",
                user=user,
                agent=agent,
                backend="partners" if n % 4 == 0 else "employees",
                method="tools/call",
                tool=f"tool_{n}",
            )
        )
        previous = chain(event, previous)
        records.append(previous)
    return records


def write_lines(path: Path, records: list[bytes]) -> None:
    """Write ``records`` as JSON lines, replacing the file."""
    path.write_bytes(b"".join(record + b"\n" for record in records))


def run_audit_cli(argv: list[str]) -> int:
    """Run ``agent-proxy audit ARGV`` without the process-wide logging set-up."""
    parser = argparse.ArgumentParser(prog="agent-proxy")
    add_audit_commands(parser.add_subparsers(dest="command"))
    return run_audit(parser.parse_args(["audit", *argv]))
