"""Custom stages in a running gateway, driven by the official MCP client.

One gateway runs the demo backends with two custom stages:

- ``NoteFactsStage``, from a module written to a temporary directory at
  test time and referenced as ``module:Class``. It publishes ``FactsSeen``
  with the names of the facts present when it runs, which shows its place
  in the chain;
- ``change_freeze``, from the example plug-in package, found through its
  ``agent_proxy.stages`` entry point in a generated ``.dist-info``. Two
  instances with different settings serve the two backends' chains.

The events of both reach the audit JSON-lines file.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from typing import Any

import anyio
import msgspec
import pytest
from tests.fixtures.dist_info import install_example_package

from gateway.app import open_gateway
from gateway.demo.driver import run_client
from gateway.demo.runner import DEMO_PORTS, DemoStack, demo_config, demo_peer_apps
from gateway.demo.serve import bind_socket, run_app

TEMP_MODULE_SOURCE = """
from typing import Any, ClassVar

from gateway.events import GatewayEvent
from pipeline import BaseStage, Event


class FactsSeen(GatewayEvent, frozen=True, kw_only=True):
    facts: list[str]


class NoteFactsStage(BaseStage[Any, Any]):
    after: ClassVar[frozenset[str]] = frozenset({"audit"})
    events: ClassVar[tuple[type[Event], ...]] = (FactsSeen,)

    async def handle(self, ctx: Any, call_next: Any) -> Any:
        await ctx.runtime.publish(
            FactsSeen(**ctx.event_fields(self.name), facts=sorted(ctx.facts))
        )
        return await call_next(ctx)
"""


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def stage_paths(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Put the temporary module and the example package on ``sys.path``.

    Yields the ``module:Class`` reference of the temporary module's stage.
    """
    module_dir = tmp_path_factory.mktemp("modules")
    module_name = f"temp_stage_{uuid.uuid4().hex[:8]}"
    (module_dir / f"{module_name}.py").write_text(TEMP_MODULE_SOURCE)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(module_dir))
        install_example_package(tmp_path_factory.mktemp("site"), patch)
        yield f"{module_name}:NoteFactsStage"


@pytest.fixture(scope="module")
async def stack(
    stage_paths: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[DemoStack]:
    """The demo stack with both custom stages in the chains."""
    var_dir = tmp_path_factory.mktemp("var")
    sockets = {name: bind_socket("127.0.0.1", 0) for name in DEMO_PORTS}
    urls = {
        name: f"http://127.0.0.1:{sock.getsockname()[1]}"
        for name, sock in sockets.items()
    }
    config = demo_config(urls, var_dir)
    employees = msgspec.structs.replace(
        config.backends["employees"],
        pipeline=[
            "audit",
            "authenticate",
            "identify_agent",
            "authorize",
            "change_freeze/reads",
            "exchange",
            "session",
            "forward",
        ],
    )
    config = msgspec.structs.replace(
        config,
        backends={**config.backends, "employees": employees},
        pipeline=[
            "audit",
            "authenticate",
            stage_paths,
            "identify_agent",
            "authorize",
            "change_freeze/sync",
            "exchange",
            "session",
            "forward",
        ],
        stages={
            **config.stages,
            "change_freeze/sync": {"tools": ["sync_*"]},
            "change_freeze/reads": {"tools": ["list_*"], "note": "until Monday"},
        },
    )
    apps = demo_peer_apps(config, urls)
    async with AsyncExitStack() as exits:
        for name in ("idp", "employees", "partners"):
            await exits.enter_async_context(run_app(apps[name], sock=sockets[name]))
        gateway = await exits.enter_async_context(open_gateway(config))
        await exits.enter_async_context(run_app(gateway.asgi, sock=sockets["gateway"]))
        yield DemoStack(gateway, config, urls, var_dir / "audit.jsonl")


async def audit_events(stack: DemoStack, event_type: str) -> list[dict[str, Any]]:
    """Wait until the audit file has an event of ``event_type``; return them all."""
    with anyio.fail_after(10):
        while True:
            if stack.audit_path.exists():
                lines = stack.audit_path.read_text().splitlines()
                events = [json.loads(line) for line in lines if line]
                if any(event["type"] == event_type for event in events):
                    return events
            await anyio.sleep(0.05)


async def request_completion(stack: DemoStack, request_id: str) -> dict[str, Any]:
    """Wait for the ``ResponseCompleted`` event of one request and return it."""
    with anyio.fail_after(10):
        while True:
            events = await audit_events(stack, "ResponseCompleted")
            for event in events:
                if (
                    event["type"] == "ResponseCompleted"
                    and event["request_id"] == request_id
                ):
                    return event
            await anyio.sleep(0.05)


def of_request(events: list[dict[str, Any]], request_id: str) -> list[str]:
    return [e["type"] for e in events if e["request_id"] == request_id]


@pytest.mark.anyio
async def test_entry_point_stage_rejects_frozen_tool(stack: DemoStack) -> None:
    """The plug-in stage rejects a covered call before any token exchange."""
    report = await run_client(
        stack.mcp_url("partners"),
        client_name="cursor",
        calls=[("list_partners", {}), ("sync_partner_feed", {"partner_id": "P-100"})],
    )
    assert "sync_partner_feed" in report.tools
    assert report.results["list_partners"][0] is False
    is_error, message = report.results["sync_partner_feed"]
    assert is_error
    assert "is frozen by a change freeze" in message

    events = await audit_events(stack, "ToolCallFrozen")
    [frozen] = [e for e in events if e["type"] == "ToolCallFrozen"]
    assert frozen["stage"] == "change_freeze/sync"
    assert frozen["tool"] == "sync_partner_feed"
    assert frozen["pattern"] == "sync_*"
    assert frozen["outcome"] == "denied"
    assert frozen["user"]["sub"]
    assert of_request(events, frozen["request_id"])[:5] == [
        "RequestAuthenticated",
        "FactsSeen",
        "AgentIdentified",
        "AccessGranted",
        "ToolCallFrozen",
    ]
    assert "TokenExchanged" not in of_request(events, frozen["request_id"])
    completed = await request_completion(stack, frozen["request_id"])
    assert completed["outcome"] == "denied"
    assert completed["reason"] == "change_freeze"


@pytest.mark.anyio
async def test_temporary_module_stage_runs_in_place(stack: DemoStack) -> None:
    """The ``module:Class`` stage gets only the facts of the stages before it."""
    await run_client(stack.mcp_url("partners"), client_name="cursor", calls=[])
    events = await audit_events(stack, "FactsSeen")
    seen = [e for e in events if e["type"] == "FactsSeen"]
    assert seen
    for event in seen:
        assert event["facts"] == ["principal"]
        assert event["stage"].endswith(":NoteFactsStage")
        assert event["backend"] == "partners"
        assert event["prev_hash"] is not None


@pytest.mark.anyio
async def test_instances_differ_per_backend_chain(stack: DemoStack) -> None:
    """Two instances of one stage type apply their own settings per backend."""
    report = await run_client(
        stack.mcp_url("employees"),
        client_name="cursor",
        calls=[("list_employees", {}), ("get_employee", {"employee_id": "E1001"})],
    )
    is_error, message = report.results["list_employees"]
    assert is_error
    assert "is frozen by a change freeze until Monday" in message
    assert report.results["get_employee"][0] is False

    events = await audit_events(stack, "ToolCallFrozen")
    employees = [
        e
        for e in events
        if e["type"] == "ToolCallFrozen" and e["backend"] == "employees"
    ]
    assert [(e["stage"], e["tool"]) for e in employees] == [
        ("change_freeze/reads", "list_employees")
    ]
    employee_types = {e["type"] for e in events if e["backend"] == "employees"}
    assert "FactsSeen" not in employee_types
