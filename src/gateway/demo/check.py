"""The demo's self-check: the official MCP client through every stage.

Each step signs in as one demo agent with the official MCP client, then
lists and calls tools, and compares the outcome with what the demo config
allows. The audit file is checked last.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec

from gateway.config import IdJagAuth
from gateway.demo.driver import (
    CallReport,
    SignInRefused,
    pre_registered_storage,
    run_client,
)
from gateway.demo.runner import DemoStack

VERIFIED_CLIENT = "cursor-desktop"
"""The demo's pre-registered client, which makes ``cursor`` a verified agent."""

REQUIRED_EVENTS = (
    "RequestAuthenticated",
    "AgentIdentified",
    "AccessGranted",
    "TokenExchanged",
    "ResponseCompleted",
)


@dataclass
class StepResult:
    """The outcome of one check step.

    Attributes:
        name: What the step checks.
        ok: Whether it behaved as expected.
        detail: What happened, for the printed report.
    """

    name: str
    ok: bool
    detail: str


async def run_checks(stack: DemoStack, *, echo: Callable[[str], None] = print) -> bool:
    """Run every demo step against a running demo; return whether all passed."""
    results: list[StepResult] = []
    steps = [
        _cursor_employees,
        _cursor_partners,
        _claude_code_partners_refused,
        _claude_code_employees,
        _verified_cursor_employees,
    ]
    for step in steps:
        result = await step(stack)
        results.append(result)
        echo(f"{'PASS' if result.ok else 'FAIL'}  {result.name}: {result.detail}")
    await stack.gateway.runtime.bus.drain()
    audit = _check_audit(stack.audit_path)
    results.append(audit)
    echo(f"{'PASS' if audit.ok else 'FAIL'}  {audit.name}: {audit.detail}")
    return all(result.ok for result in results)


async def _cursor_employees(stack: DemoStack) -> StepResult:
    name = "cursor calls employees through ID-JAG in a 2025-11-25 session"
    try:
        report = await run_client(
            stack.mcp_url("employees"),
            client_name="cursor",
            login_hint="alice",
            calls=[("list_employees", {}), ("generate_report", {"n": 3})],
            mode="legacy",
        )
    except Exception as exc:
        return StepResult(name, False, _describe(exc))
    problems = _expect_calls(report, ["list_employees", "generate_report"])
    if "update_salary" not in report.tools:
        problems.append("update_salary should be listed for cursor")
    if not report.progress:
        problems.append("no progress notification arrived during generate_report")
    return _result(name, problems, report)


async def _cursor_partners(stack: DemoStack) -> StepResult:
    name = "cursor at 2026-07-28 calls partners, a handshake-era backend"
    try:
        report = await run_client(
            stack.mcp_url("partners"),
            client_name="cursor",
            login_hint="bob",
            calls=[("list_partners", {})],
            mode="2026-07-28",
        )
    except Exception as exc:
        return StepResult(name, False, _describe(exc))
    return _result(name, _expect_calls(report, ["list_partners"]), report)


async def _claude_code_partners_refused(stack: DemoStack) -> StepResult:
    name = "claude-code is refused sign-in for partners"
    # The SDK logs the refused sign-in with a traceback; here it is expected.
    sdk_log = logging.getLogger("mcp.client.auth")
    level = sdk_log.level
    sdk_log.setLevel(logging.CRITICAL)
    try:
        await run_client(stack.mcp_url("partners"), client_name="claude-code", calls=[])
    except SignInRefused as exc:
        ok = exc.error == "access_denied"
        return StepResult(name, ok, f"refused with {exc.error}: {exc.description}")
    except Exception as exc:
        return StepResult(name, False, _describe(exc))
    finally:
        sdk_log.setLevel(level)
    return StepResult(name, False, "the sign-in succeeded, but policy forbids it")


async def _claude_code_employees(stack: DemoStack) -> StepResult:
    name = "claude-code calls employees; update_salary is denied"
    try:
        report = await run_client(
            stack.mcp_url("employees"),
            client_name="claude-code",
            calls=[("list_employees", {}), ("update_salary", _salary_args())],
        )
    except Exception as exc:
        return StepResult(name, False, _describe(exc))
    problems = _expect_calls(report, ["list_employees"])
    if "update_salary" in report.tools:
        problems.append("update_salary should be filtered from tools/list")
    denied = report.results.get("update_salary")
    if denied is None or not denied[0] or "denied" not in denied[1].lower():
        problems.append(f"update_salary should be denied, got {denied!r}")
    return _result(name, problems, report)


async def _verified_cursor_employees(stack: DemoStack) -> StepResult:
    name = "cursor-desktop, a verified cursor, reaches employees through its own client"
    client = stack.config.oauth.clients[VERIFIED_CLIENT]
    auth = stack.config.backends["employees"].auth
    assert isinstance(auth, IdJagAuth)
    expected = auth.agent_clients["cursor"].client_id
    try:
        report = await run_client(
            stack.mcp_url("employees"),
            client_name="cursor",
            calls=[("list_employees", {})],
            storage=pre_registered_storage(VERIFIED_CLIENT, client.client_secret),
        )
    except Exception as exc:
        return StepResult(name, False, _describe(exc))
    problems = _expect_calls(report, ["list_employees"])
    if not problems:
        caller = json.loads(report.results["list_employees"][1])["requested_by"]
        if caller.get("client_id") != expected:
            problems.append(
                f"the backend saw client {caller.get('client_id')!r}, not the "
                f"agent's own {expected!r}"
            )
    return _result(name, problems, report)


def _salary_args() -> dict[str, Any]:
    return {"employee_id": "E001", "amount": 1}


def _expect_calls(report: CallReport, names: list[str]) -> list[str]:
    problems = []
    for tool in names:
        outcome = report.results.get(tool)
        if outcome is None:
            problems.append(f"{tool} was not called")
        elif outcome[0]:
            problems.append(f"{tool} failed: {outcome[1][:200]}")
    return problems


def _result(name: str, problems: list[str], report: CallReport) -> StepResult:
    if problems:
        return StepResult(name, False, "; ".join(problems))
    calls = ", ".join(report.results)
    return StepResult(
        name,
        True,
        f"protocol {report.protocol_version}, {len(report.tools)} tools listed, "
        f"called {calls}",
    )


def _check_audit(path: Path) -> StepResult:
    name = "audit file records every stage"
    if not path.exists():
        return StepResult(name, False, f"{path} does not exist")
    events = [
        msgspec.json.decode(line) for line in path.read_bytes().splitlines() if line
    ]
    types = {event.get("type") for event in events}
    missing = [kind for kind in REQUIRED_EVENTS if kind not in types]
    for kind in ("AccessDenied", "AuthorizationRejected"):
        if kind not in types:
            missing.append(kind)
    if not any(e.get("type") == "TokenExchanged" and e.get("cache") for e in events):
        missing.append("TokenExchanged with a cache result")
    if not any(
        e.get("type") == "AgentIdentified"
        and (e.get("agent") or {}).get("trust") == "verified"
        for e in events
    ):
        missing.append("AgentIdentified of a verified agent")
    if missing:
        return StepResult(name, False, f"missing events: {', '.join(missing)}")
    return StepResult(name, True, f"{len(events)} events in {path}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


async def check_demo(stack: DemoStack, echo: Callable[[str], None] = print) -> bool:
    """Run the checks with an overall time limit."""
    with anyio.fail_after(120):
        return await run_checks(stack, echo=echo)
