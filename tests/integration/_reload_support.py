"""``agent-proxy run`` in a subprocess whose config a test rewrites under load.

The dev IdP, both demo backends and a third backend with a gated tool (see
:mod:`_transport_harness`) run in the test process on loopback. The gateway
runs as ``python -m gateway run`` with a config file in a temporary
directory, so a test can rewrite the file or send ``SIGHUP`` to the process
it started. A :class:`Load` runs official-SDK clients that call one tool
over and over, in both protocol eras, and records each call's outcome.
"""

from __future__ import annotations

import copy
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import msgspec
import yaml
from _grant_support import FrontDoor, bind_sockets, running_peers, stack_config
from _transport_harness import BackendControls, create_backend_app
from mcp import MCPError
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from tests.integration.test_grant_revoke_cli import (
    start_gateway,
    stop,
    wait_until_serving,
)

from gateway.demo.serve import bind_socket, run_app

EVENT_TIMEOUT = 20.0
"""Seconds a test waits for an audit event; a file change needs about 2."""
LOAD_TIMEOUT = 60.0
"""Seconds a load may run in all, whatever its call count."""
GATED_KEY = "gated-backend-test-key"


def digest(data: bytes) -> str:
    """Return the SHA-256 (hex) of a config file's bytes."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class ReloadStack:
    """A running ``agent-proxy run`` with its peers and its config file.

    Attributes:
        process: The gateway process.
        config_path: Its config file.
        var_dir: Its ``server.var_dir``, with ``audit.jsonl``.
        log: Its stdout and stderr: JSON log lines.
        urls: Base URL per component, with ``gated`` for the gated backend.
        front: The browser-like client of the front door.
        controls: The gated backend's levers and records.
        config: The config first written, as YAML builtins.
    """

    process: subprocess.Popen[bytes]
    config_path: Path
    var_dir: Path
    log: Path
    urls: dict[str, str]
    front: FrontDoor
    controls: BackendControls
    config: dict[str, Any]

    def edited(self) -> dict[str, Any]:
        """Return a copy of the first config to change."""
        return copy.deepcopy(self.config)

    def write(self, content: dict[str, Any] | str) -> str:
        """Replace the config file as editors do (write, then rename).

        Returns:
            The SHA-256 of the bytes written.
        """
        text = content if isinstance(content, str) else yaml.safe_dump(content)
        data = text.encode()
        staged = self.config_path.with_suffix(".tmp")
        staged.write_bytes(data)
        os.replace(staged, self.config_path)
        return digest(data)

    def sighup(self) -> None:
        """Send ``SIGHUP`` to the gateway process."""
        self.process.send_signal(signal.SIGHUP)

    def audit_events(self, kind: str) -> list[dict[str, Any]]:
        """Return the audit file's events of one type, in order."""
        path = self.var_dir / "audit.jsonl"
        if not path.exists():
            return []
        data = path.read_bytes()
        # A line the sink is still writing has no newline yet.
        lines = data[: data.rfind(b"\n") + 1].splitlines()
        events = [msgspec.json.decode(line) for line in lines if line.strip()]
        return [event for event in events if event["type"] == kind]

    async def next_event(self, kind: str, seen: int) -> dict[str, Any]:
        """Wait for the audit event of ``kind`` after the first ``seen`` ones."""
        with anyio.fail_after(EVENT_TIMEOUT):
            while True:
                events = self.audit_events(kind)
                if len(events) > seen:
                    return events[seen]
                await self._check_running()

    async def event_where(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Wait for the first audit event of ``kind`` with these field values."""
        with anyio.fail_after(EVENT_TIMEOUT):
            while True:
                for event in self.audit_events(kind):
                    if all(event.get(k) == v for k, v in fields.items()):
                        return event
                await self._check_running()

    async def _check_running(self) -> None:
        if self.process.poll() is not None:
            msg = f"the gateway exited:\n{self.log.read_text()[-3000:]}"
            raise AssertionError(msg)
        await anyio.sleep(0.05)

    def log_lines(self, event: str) -> list[dict[str, Any]]:
        """Return the gateway's JSON log lines with one event name."""
        lines = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                record = msgspec.json.decode(line)
                if record.get("event") == event:
                    lines.append(record)
        return lines

    def mcp_url(self, backend: str) -> str:
        """Return a backend's MCP endpoint at the gateway."""
        return f"{self.urls['gateway']}/{backend}/mcp"


@asynccontextmanager
async def reload_stack(tmp_path: Path) -> AsyncIterator[ReloadStack]:
    """Run the peers here and ``agent-proxy run`` in a subprocess."""
    sockets = bind_sockets()
    gated_socket = bind_socket()
    urls = {
        name: f"http://127.0.0.1:{sock.getsockname()[1]}"
        for name, sock in {**sockets, "gated": gated_socket}.items()
    }
    # The subprocess binds the gateway port itself.
    sockets.pop("gateway").close()
    var_dir = tmp_path / "var"
    demo = stack_config(urls, var_dir)
    config: dict[str, Any] = msgspec.to_builtins(demo)
    config["backends"]["gated"] = {
        "path": "/gated/mcp",
        "url": urls["gated"] + "/mcp",
        "auth": {"kind": "static-key", "value": GATED_KEY},
    }
    config["agents"]["cursor"]["backends"].append("gated")
    config_path = tmp_path / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    log = tmp_path / "gateway.log"
    controls = BackendControls()

    async with (
        running_peers(sockets, urls, demo),
        run_app(create_backend_app(controls), sock=gated_socket),
    ):
        process = start_gateway(config_path, log)
        try:
            await wait_until_serving(
                process, urls["gateway"], var_dir / "admin.sock", log
            )
            async with httpx.AsyncClient(
                base_url=urls["gateway"], timeout=10.0
            ) as browser:
                # The front door helper needs no runtime for these calls.
                runtime: Any = None
                front = FrontDoor(urls["gateway"], urls["idp"], runtime, browser)
                yield ReloadStack(
                    process, config_path, var_dir, log, urls, front, controls, config
                )
        finally:
            await stop(process)
    assert process.returncode == 0, log.read_text()[-3000:]


def deny_tool(config: dict[str, Any], backend: str, tool: str) -> dict[str, Any]:
    """Return ``config`` with ``tool`` on ``backend`` denied to ``cursor``."""
    changed = copy.deepcopy(config)
    tools = changed["agents"]["cursor"].setdefault("tools", {})
    tools[backend] = {"allow": ["*"], "deny": [tool]}
    return changed


@dataclass(frozen=True)
class Call:
    """One tool call of a load: when it started and ended, and its outcome.

    Times are ``time.monotonic()`` in the test process.
    """

    worker: int
    started: float
    ended: float
    outcome: str


@dataclass
class Load:
    """Official-SDK clients calling one tool in a loop, bounded by count and time.

    Even workers use the ``initialize`` handshake (2025-11-25), odd ones the
    stateless revision 2026-07-28. A call ends ``allowed`` (a result that is
    not an error) or ``denied`` (the gateway's access-denied JSON-RPC error);
    anything else is a failure, which ends its worker.

    Attributes:
        url: The MCP endpoint at the gateway.
        token: The gateway access token.
        tool: The tool called, with no arguments.
        workers: How many clients run at once.
        max_calls: Calls per worker at most.
        calls: Every call that ended, in order of ending.
        statuses: The HTTP status of every response the clients received.
        failures: What went wrong, one entry per failed worker.
    """

    url: str
    token: str
    tool: str = "list_partners"
    workers: int = 4
    max_calls: int = 400
    calls: list[Call] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: anyio.Event = field(default_factory=anyio.Event)

    def stop(self) -> None:
        """Let every worker finish its current call and end."""
        self._stop.set()

    def started_after(self, moment: float) -> list[Call]:
        """Return the calls that started after ``moment`` (``time.monotonic``)."""
        return [call for call in self.calls if call.started > moment]

    def ended_before(self, moment: float) -> list[Call]:
        """Return the calls that ended before ``moment``."""
        return [call for call in self.calls if call.ended < moment]

    async def wait_calls(self, each: int, after: float = 0.0) -> None:
        """Wait until every worker finished ``each`` calls started after ``after``."""
        with anyio.fail_after(EVENT_TIMEOUT):
            while True:
                if self.failures:
                    return
                counts = [0] * self.workers
                for call in self.started_after(after):
                    counts[call.worker] += 1
                if min(counts) >= each:
                    return
                await anyio.sleep(0.02)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Load]:
        """Run the workers while the block runs; stop them when it ends."""
        with anyio.fail_after(LOAD_TIMEOUT):
            async with anyio.create_task_group() as group:
                for worker in range(self.workers):
                    group.start_soon(self._work, worker)
                try:
                    yield self
                finally:
                    self.stop()

    async def _work(self, worker: int) -> None:
        mode = "legacy" if worker % 2 == 0 else "2026-07-28"

        async def record(response: httpx2.Response) -> None:
            self.statuses.append(response.status_code)

        headers = {"authorization": f"Bearer {self.token}"}
        try:
            async with httpx2.AsyncClient(
                headers=headers,
                timeout=httpx2.Timeout(20.0),
                event_hooks={"response": [record]},
            ) as http:
                transport = streamable_http_client(self.url, http_client=http)
                async with Client(transport, mode=mode) as client:
                    for _ in range(self.max_calls):
                        if self._stop.is_set():
                            return
                        started = time.monotonic()
                        outcome = await self._call(client)
                        ended = time.monotonic()
                        self.calls.append(Call(worker, started, ended, outcome))
        except Exception as exc:
            self.failures.append(f"worker {worker} ({mode}): {exc!r}")

    async def _call(self, client: Client) -> str:
        try:
            result = await client.call_tool(self.tool, {})
        except MCPError as exc:
            if str(exc).startswith("Access denied"):
                return "denied"
            raise
        if result.is_error:
            msg = f"the tool failed: {result.content!r}"
            raise AssertionError(msg)
        return "allowed"
