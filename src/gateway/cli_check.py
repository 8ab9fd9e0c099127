"""``agent-proxy check``: validate a config and print every resolved chain.

The command starts no server and makes no network request. It lists every
problem it finds at once, in two groups: config errors (values, names,
references and stage settings) and chain errors (stage order, facts,
references and plug-ins). Warnings follow in their own groups: chain
warnings, and Okta warnings about identity settings an Okta org rejects.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from gateway.config import GatewayConfig, load_config
from gateway.config.loader import decode_config_text
from gateway.config.okta_checks import okta_warnings, read_raw_config
from gateway.errors import ConfigError
from gateway.redaction import default_redactor


def add_check_parser(commands: Any, default_config: Path) -> None:
    """Add the ``check`` command to the top-level subparsers."""
    check = commands.add_parser(
        "check",
        help="validate a config and print its chains",
        description="Validate a config file and print the chain of every "
        "backend, each stage with its type, facts, ordering constraints and "
        "settings (secrets masked). Exits 1 when the config is invalid, "
        "listing every problem.",
    )
    check.add_argument(
        "--config",
        type=Path,
        default=default_config,
        help=f"config file (default: {default_config})",
    )
    check.add_argument(
        "--audit-schema",
        action="store_true",
        help="print the JSON Schema of the audit events instead, including "
        "the events that the config's custom stages declare",
    )


def run_check(args: argparse.Namespace) -> int:
    """Run ``agent-proxy check``; returns the exit code (0 valid, 1 invalid)."""
    from gateway.audit.schema import render
    from gateway.chain_report import describe
    from gateway.chains import plan_backend_chains, stage_event_types

    path: Path = args.config
    config, config_problems = _load(path)
    chain_problems: list[str] = []
    plans: dict[str, Any] = {}
    warnings: list[str] = []
    if config is not None:
        try:
            plans, warnings = plan_backend_chains(config)
        except ConfigError as exc:
            for problem in exc.problems:
                if is_chain_problem(problem):
                    chain_problems.append(problem)
                else:
                    config_problems.append(problem)
    raw = read_raw_config(path)
    okta = [str(w) for w in okta_warnings(config, raw)] if config is not None else []

    if config_problems or chain_problems:
        count = len(config_problems) + len(chain_problems)
        noun = "problem" if count == 1 else "problems"
        print(f"{path}: invalid configuration ({count} {noun}):", file=sys.stderr)
        _print_group("config errors", config_problems, sys.stderr)
        _print_group("chain errors", chain_problems, sys.stderr)
        _print_warnings(warnings, okta, sys.stderr)
        return 1
    assert config is not None
    if args.audit_schema:
        sys.stdout.write(render(stage_event_types(plans.values())))
        return 0
    raw_stages = raw.get("stages") if isinstance(raw, dict) else None
    print(f"{path}: valid")
    for plan in plans.values():
        for line in describe(
            plan, raw_stages=raw_stages if isinstance(raw_stages, dict) else None
        ):
            print(line)
    _print_warnings(warnings, okta, sys.stdout)
    return 0


def is_chain_problem(problem: str) -> bool:
    """Return whether a planning problem is about a chain rather than a value.

    Chain problems start with a ``pipeline`` path (the default chain or a
    backend's own) or name the plug-in entry-point group.
    """
    where = problem.split(": ", 1)[0]
    return (
        where.startswith("pipeline")
        or ".pipeline" in where
        or where.startswith("agent_proxy.stages")
    )


def _load(path: Path) -> tuple[GatewayConfig | None, list[str]]:
    """Load the config; when only cross-field checks fail, decode it anyway.

    The decoded config lets the chains be checked too, so that one run lists
    both kinds of problem.
    """
    try:
        return load_config(path), []
    except ConfigError as exc:
        problems = list(exc.problems)
    try:
        text = path.read_text(encoding="utf-8")
        return decode_config_text(text, source=str(path)), problems
    except (OSError, UnicodeDecodeError, ConfigError):
        return None, problems


def _print_group(title: str, lines: Sequence[str], out: TextIO) -> None:
    if not lines:
        return
    print(f"  {title}:", file=out)
    for line in lines:
        # An exception raised while importing a custom stage may quote a
        # credential; the same text on reload goes through the log redactor.
        print(f"    {default_redactor.scrub_text(line, opaque=False)}", file=out)


def _print_warnings(chain: Sequence[str], okta: Sequence[str], out: TextIO) -> None:
    for title, lines in (("chain warnings", chain), ("Okta warnings", okta)):
        if lines:
            print(f"{title}:", file=out)
            for line in lines:
                print(f"  warning: {line}", file=out)
