"""``agent-proxy keys``: list the signing keys or rotate them now.

Both commands work on the key file named by the config (``server.var_dir``
and ``signing.key_file``). ``rotate`` changes the file under its lock, the
same way a running gateway does, so it is safe while gateways run: they
pick up the new key within seconds, and at once when a token signed with it
arrives.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigError
from gateway.oauth.keys import KeySchedule, SigningKeys

__all__ = ["add_keys_parser", "run_keys_command"]

_DESCRIPTION = """\
List the gateway's signing keys, or add a new signing key now. Run it in the
gateway's working directory when server.var_dir is relative."""

_ROTATE_DESCRIPTION = """\
Add a new signing key to the key file and retire the current one. Tokens
signed by the retired key keep verifying until they expire; then the key is
removed. Running gateways sign with the new key within seconds."""


def add_keys_parser(commands: Any, default_config: Path) -> None:
    """Add the ``keys`` subcommand, with ``list`` and ``rotate``, to ``commands``."""
    keys = commands.add_parser(
        "keys", help="list or rotate the signing keys", description=_DESCRIPTION
    )
    actions = keys.add_subparsers(dest="keys_command", required=True)
    list_parser = actions.add_parser(
        "list",
        help="print each signing key's kid, algorithm and times (no key material)",
    )
    rotate_parser = actions.add_parser(
        "rotate",
        help="add a new signing key now and retire the current one",
        description=_ROTATE_DESCRIPTION,
    )
    for action in (list_parser, rotate_parser):
        action.add_argument(
            "--config",
            type=Path,
            default=default_config,
            help=f"config file that names the key file (default: {default_config})",
        )


def run_keys_command(args: argparse.Namespace) -> int:
    """Run ``agent-proxy keys list`` or ``keys rotate``; return the exit code.

    Returns:
        0 on success; 1 when the config is invalid or the key file is
        missing, invalid or cannot be written.
    """
    command = f"agent-proxy keys {args.keys_command}"
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"{command}: {args.config}: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    path = key_file_path(config)
    schedule = KeySchedule.from_config(config.signing)
    try:
        keys = SigningKeys.load(path, schedule=schedule)
        if args.keys_command == "rotate":
            previous = keys.kid
            keys.rotate(config.signing.algorithm)
            print(f"{path}: {keys.kid} ({keys.algorithm}) signs from now on")
            retired = next(entry for entry in keys.entries if entry.kid == previous)
            due = retired.removal_due(schedule.retention)
            print(f"{path}: {previous} retired, removal due {_time(due)}")
            return 0
    except FileNotFoundError:
        print(
            f"{command}: no signing key file at {path}; the gateway creates it "
            "at its first start. Check server.var_dir and signing.key_file, "
            "and run this command in the gateway's working directory.",
            file=sys.stderr,
        )
        return 1
    except (OSError, ValueError) as exc:
        print(f"{command}: cannot use {path}: {exc}", file=sys.stderr)
        return 1
    for line in format_key_table(keys, schedule):
        print(line)
    return 0


def key_file_path(config: GatewayConfig) -> Path:
    """Return the key file of ``config``: ``signing.key_file`` under ``var_dir``."""
    path = Path(config.signing.key_file)
    return path if path.is_absolute() else Path(config.server.var_dir) / path


def format_key_table(keys: SigningKeys, schedule: KeySchedule) -> list[str]:
    """Return the lines of ``keys list``: a header and one line per key.

    Columns: kid, algorithm, when the key started signing, when it was
    retired and when its removal is due (UTC, ``-`` for the signing key).
    """
    rows = [("KID", "ALG", "STARTED", "RETIRED", "REMOVAL DUE")]
    for entry in keys.entries:
        rows.append(
            (
                entry.kid,
                entry.algorithm,
                _time(entry.created_at),
                _time(entry.retired_at),
                _time(entry.removal_due(schedule.retention)),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        lines.append("  ".join([*cells, row[4]]))
    return lines


def _time(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
