"""The ``agent-proxy audit`` commands: ``verify`` and ``tail``."""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
from pathlib import Path
from typing import Any

import msgspec

from gateway.audit.tail import (
    EventFilter,
    follow_lines,
    format_text,
    last_lines,
    select,
)
from gateway.audit.verify import expand, verify_chain

DEFAULT_CONFIG = Path("config/gateway.yaml")


def add_audit_commands(commands: Any) -> None:
    """Add ``audit verify`` and ``audit tail`` to the top-level subparsers."""
    audit = commands.add_parser("audit", help="check and read the audit files")
    actions = audit.add_subparsers(dest="audit_command", metavar="ACTION")

    verify = actions.add_parser(
        "verify",
        help="check the hash chain of audit JSON-lines files",
        description="Check that the files form one unbroken hash chain. A file "
        "with rotated backups (FILE.1, FILE.2, ...) is checked together with "
        "them, oldest first. Exits 1 at the first break, naming its line. "
        "The chain shows changed, removed and inserted records, but not "
        "records cut from the end: compare the printed chain head with a "
        "copy kept elsewhere for that.",
    )
    verify.add_argument("files", nargs="+", type=Path, metavar="FILE")
    verify.add_argument(
        "--allow-missing-start",
        action="store_true",
        help="accept a stream whose first file has no backups and whose first "
        "record follows a record not in the files (the file was started after "
        "an outside tool moved the previous one away); without it this exits 1, "
        "because lines cut from the start of a file look the same",
    )

    tail = actions.add_parser(
        "tail",
        help="print the latest audit events, and follow new ones",
        description="Print the last matching events of the jsonl sink's file "
        "(with its rotated backups) and, with --follow, each new one. Filters "
        "of one kind may be repeated; an event must match every kind given.",
    )
    tail.add_argument(
        "--file",
        type=Path,
        help="the audit file (default: the first jsonl sink of --config)",
    )
    tail.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"config file that names the audit file (default: {DEFAULT_CONFIG})",
    )
    tail.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new events"
    )
    tail.add_argument(
        "-n",
        "--lines",
        type=int,
        default=10,
        metavar="N",
        help="matching events printed from before the start (default: 10)",
    )
    tail.add_argument(
        "--format",
        choices=["json", "text"],
        default="json",
        help="JSON lines as written, or one compact line per event for people",
    )
    for option, metavar, what in (
        ("--user", "SUB", "user subject (user.sub)"),
        ("--agent", "ID", "agent id"),
        ("--backend", "NAME", "backend name"),
        ("--outcome", "OUTCOME", "outcome: success, denied or error"),
        ("--type", "TYPE", "event type, such as AccessDenied"),
    ):
        tail.add_argument(
            option, action="append", default=[], metavar=metavar, help=what
        )


def run_audit(args: argparse.Namespace) -> int:
    """Run the ``audit`` command chosen in ``args``; return the exit code."""
    if args.audit_command == "verify":
        return verify_command(args.files, allow_missing_start=args.allow_missing_start)
    if args.audit_command == "tail":
        path = args.file or _configured_file(args.config)
        if path is None:
            return 1
        keep = EventFilter(
            users=frozenset(args.user),
            agents=frozenset(args.agent),
            backends=frozenset(args.backend),
            outcomes=frozenset(args.outcome),
            types=frozenset(args.type),
        )
        # Ctrl-C is the usual way to end --follow, so it exits quietly.
        with contextlib.suppress(KeyboardInterrupt):
            tail_command(
                path, keep, lines=args.lines, follow=args.follow, fmt=args.format
            )
        return 0
    print("usage: agent-proxy audit {verify,tail} ...", file=sys.stderr)
    return 2


def verify_command(paths: list[Path], *, allow_missing_start: bool = False) -> int:
    """Check the chain of ``paths`` and print the result; return the exit code.

    A stream that starts with a rotated backup may begin after a record of a
    deleted older backup. A stream that starts with a file given by name
    (one never rotated) must begin with the first record of the chain,
    whose ``prev_hash`` is null: otherwise lines were cut from its start,
    or an outside tool moved the previous file away, which
    ``allow_missing_start`` accepts.

    Exit codes: 0 when the chain holds, 1 at a break or a missing start, 2
    when a file cannot be read.
    """
    files = expand(paths)
    try:
        report = verify_chain(files)
    except OSError as exc:
        print(
            f"agent-proxy audit verify: cannot read {exc.filename}: {exc.strerror}",
            file=sys.stderr,
        )
        return 2
    names = ", ".join(str(path) for path in files)
    if report.problem is not None:
        print(f"{report.problem}", file=sys.stderr)
        print(
            f"chain broken after {report.records} intact records in {names}",
            file=sys.stderr,
        )
        return 1
    if report.anchor is not None and files[0] in paths and not allow_missing_start:
        print(
            f"{files[0]}:1: the first record follows sha256:{report.anchor}, "
            "which is in none of the files and no older backup exists: lines "
            "were cut from the start of the file, or the file before it was "
            "moved away (pass --allow-missing-start to accept that)",
            file=sys.stderr,
        )
        return 1
    print(f"{names}: chain intact, {report.records} records")
    if report.anchor is not None:
        print(
            f"  the first record follows sha256:{report.anchor}, "
            "a record in a file not checked (such as a deleted backup)"
        )
    if report.head is not None:
        print(f"  chain head sha256:{report.head}")
    return 0


def tail_command(
    path: Path,
    keep: EventFilter,
    *,
    lines: int,
    follow: bool,
    fmt: str,
    stop: threading.Event | None = None,
) -> None:
    """Print the last ``lines`` matching events of ``path``, then follow it.

    Follows until ``stop`` is set or the process is interrupted.
    """
    initial, end = last_lines(path, lines, keep)
    for line, event in select(initial, keep):
        _print_event(line, event, fmt)
    if not follow:
        return
    stop = stop or threading.Event()
    for line, event in select(follow_lines(path, end, stop=stop), keep):
        _print_event(line, event, fmt)


def _print_event(line: bytes, event: dict[str, Any], fmt: str) -> None:
    text = format_text(event) if fmt == "text" else line.decode()
    print(text, flush=True)


def _configured_file(config_path: Path) -> Path | None:
    """Return the first jsonl sink's file of a config, printing why not."""
    from gateway.app import audit_config
    from gateway.audit.config import JsonlSinkConfig
    from gateway.audit.subscribers import resolve
    from gateway.config import load_config
    from gateway.errors import ConfigError

    try:
        config = load_config(config_path)
        settings = audit_config(config)
    except ConfigError as exc:
        print(f"{config_path}: invalid configuration; pass --file", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None
    except msgspec.ValidationError as exc:
        print(f"{config_path}: stages.audit: {exc}; pass --file", file=sys.stderr)
        return None
    for sink in settings.sinks:
        if isinstance(sink, JsonlSinkConfig):
            return resolve(Path(config.server.var_dir), sink.path)
    print(
        f"{config_path}: stages.audit has no jsonl sink; pass --file", file=sys.stderr
    )
    return None
