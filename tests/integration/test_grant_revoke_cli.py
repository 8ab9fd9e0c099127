"""``agent-proxy revoke`` against ``agent-proxy run`` in its own process.

The dev IdP and both demo backends run in the test process on loopback. The
gateway runs as ``python -m gateway run`` with a config file in a temporary
``var_dir``, and each ``agent-proxy revoke`` is a process of its own.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from _grant_support import (
    FrontDoor,
    bind_sockets,
    initialize,
    running_peers,
    sign_in,
    stack_config,
    urls_of,
    write_config,
)

pytestmark = pytest.mark.anyio

STARTUP_TIMEOUT = 60.0
CLI_ENV = {**os.environ, "OTEL_SDK_DISABLED": "true"}


@dataclass
class RunningGateway:
    """``agent-proxy run`` in a subprocess, and the client of its front door."""

    config_path: Path
    var_dir: Path
    front: FrontDoor

    @property
    def admin_socket(self) -> Path:
        return self.var_dir / "admin.sock"

    def audit_events(self, kind: str) -> list[dict[str, Any]]:
        lines = (self.var_dir / "audit.jsonl").read_bytes().splitlines()
        events = [msgspec.json.decode(line) for line in lines if line]
        return [event for event in events if event["type"] == kind]


def revoke_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``agent-proxy revoke`` with ``args`` in a new process."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "revoke", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=CLI_ENV,
        check=False,
    )


async def run_revoke(*args: str) -> subprocess.CompletedProcess[str]:
    return await anyio.to_thread.run_sync(lambda: revoke_cli(*args))


async def wait_until_serving(
    process: subprocess.Popen[bytes], url: str, admin_socket: Path, log: Path
) -> None:
    async with httpx.AsyncClient(timeout=2.0) as http:
        with anyio.fail_after(STARTUP_TIMEOUT):
            while True:
                if process.poll() is not None:
                    pytest.fail(f"agent-proxy run exited:\n{log.read_text()}")
                try:
                    response = await http.get(
                        f"{url}/.well-known/oauth-authorization-server"
                    )
                except httpx.TransportError:
                    response = None
                if response is not None and admin_socket.exists():
                    return
                await anyio.sleep(0.1)


async def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            await anyio.to_thread.run_sync(lambda: process.wait(timeout=20))
        except subprocess.TimeoutExpired:
            process.kill()
            await anyio.to_thread.run_sync(process.wait)


def start_gateway(config_path: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start ``agent-proxy run`` with its output in ``log``."""
    with log.open("wb") as output:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "--log-format",
                "json",
                "run",
                "--config",
                str(config_path),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=CLI_ENV,
        )


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    """The demo peers in this process and ``agent-proxy run`` in another."""
    sockets = bind_sockets()
    urls = urls_of(sockets)
    # The subprocess binds the gateway port itself.
    sockets.pop("gateway").close()
    var_dir = tmp_path / "var"
    config = stack_config(urls, var_dir)
    config_path = write_config(config, tmp_path / "gateway.yaml")
    log = tmp_path / "gateway.log"

    async with running_peers(sockets, urls, config):
        process = start_gateway(config_path, log)
        try:
            admin_socket = var_dir / "admin.sock"
            await wait_until_serving(process, urls["gateway"], admin_socket, log)
            async with httpx.AsyncClient(
                base_url=urls["gateway"], timeout=10.0
            ) as browser:
                # The front door helper needs no runtime for these calls.
                runtime: Any = None
                front = FrontDoor(urls["gateway"], urls["idp"], runtime, browser)
                yield RunningGateway(config_path, var_dir, front)
        finally:
            await stop(process)

    assert process.returncode == 0, log.read_text()
    assert not (var_dir / "admin.sock").exists()


async def works(gateway: RunningGateway, tokens: dict[str, Any]) -> bool:
    """Return whether the access token is accepted at the MCP endpoint."""
    response = await initialize(gateway.front, tokens["access_token"])
    if response.status_code == 401:
        assert "resource_metadata=" in response.headers["www-authenticate"]
        return False
    assert response.status_code == 200, response.text
    return True


async def refreshes(
    gateway: RunningGateway, client: dict[str, Any], tokens: dict[str, Any]
) -> bool:
    """Return whether the refresh token still gets new tokens."""
    response = await gateway.front.refresh(client, tokens["refresh_token"])
    if response.status_code == 200:
        tokens["refresh_token"] = response.json()["refresh_token"]
        return True
    assert response.json()["error"] == "invalid_grant"
    return False


async def test_revoke_cli_by_user_ends_only_that_user(
    gateway: RunningGateway,
) -> None:
    """--user ends that user's grants; another user's grant keeps working."""
    alice_client, alice = await sign_in(gateway.front, user="alice")
    bob_client, bob = await sign_in(gateway.front, user="bob")
    assert await works(gateway, bob)

    result = await run_revoke("--config", str(gateway.config_path), "--user", "00u_bob")

    assert result.returncode == 0, result.stderr
    assert "Revoked 1 grant matching user 00u_bob" in result.stdout
    assert not await works(gateway, bob)
    assert not await refreshes(gateway, bob_client, bob)
    assert await works(gateway, alice)
    assert await refreshes(gateway, alice_client, alice)


async def test_revoke_cli_by_agent_ends_only_that_agent(
    gateway: RunningGateway,
) -> None:
    """--agent ends that agent's grants; another agent's grant keeps working."""
    cursor_client, cursor = await sign_in(gateway.front, client_name="cursor")
    claude_client, claude = await sign_in(gateway.front, client_name="claude-code")

    result = await run_revoke(
        "--config", str(gateway.config_path), "--agent", "claude-code"
    )

    assert result.returncode == 0, result.stderr
    assert "Revoked 1 grant matching agent claude-code" in result.stdout
    assert not await works(gateway, claude)
    assert not await refreshes(gateway, claude_client, claude)
    assert await works(gateway, cursor)
    assert await refreshes(gateway, cursor_client, cursor)


async def test_revoke_cli_by_client_ends_only_that_client(
    gateway: RunningGateway,
) -> None:
    """--client ends that client's grants and publishes GrantRevoked for each."""
    first_client, first = await sign_in(gateway.front)
    second_client, second = await sign_in(gateway.front)
    _, again = await sign_in(gateway.front, user="bob")
    second_id = second_client["client_id"]

    result = await run_revoke(
        "--socket", str(gateway.admin_socket), "--client", second_id
    )

    assert result.returncode == 0, result.stderr
    assert f"Revoked 1 grant matching client {second_id}" in result.stdout
    assert not await works(gateway, second)
    assert not await refreshes(gateway, second_client, second)
    assert await works(gateway, first)
    assert await refreshes(gateway, first_client, first)
    assert await works(gateway, again)
    await anyio.sleep(0.2)
    (event,) = gateway.audit_events("GrantRevoked")
    assert event["reason"] == "admin_revoke"
    assert event["client_id"] == second_id
    assert event["selector"]["client_id"] == second_id
    assert event["user"]["sub"] == "00u_alice"


async def test_revoke_cli_no_match_exits_zero(gateway: RunningGateway) -> None:
    """A selector that matches nothing is reported, with exit code 0."""
    _, tokens = await sign_in(gateway.front)

    result = await run_revoke(
        "--config",
        str(gateway.config_path),
        "--user",
        "00u_alice",
        "--agent",
        "claude-code",
    )

    assert result.returncode == 0, result.stderr
    assert "No grant matched user 00u_alice, agent claude-code" in result.stdout
    assert await works(gateway, tokens)


async def test_run_admin_socket_owner_only(gateway: RunningGateway) -> None:
    """agent-proxy run creates the admin socket with mode 0600."""
    mode = gateway.admin_socket.lstat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


async def test_revoke_cli_no_gateway_fails_clearly(tmp_path: Path) -> None:
    """Without a gateway at the socket the command reports it and exits 1."""
    missing = tmp_path / "admin.sock"

    result = await run_revoke("--socket", str(missing), "--user", "00u_alice")

    assert result.returncode == 1
    assert f"no gateway is running with admin socket {missing}" in result.stderr


async def test_revoke_cli_stale_socket_fails_clearly(tmp_path: Path) -> None:
    """A socket file no process listens on is reported as no gateway, exit 1."""
    path = tmp_path / "admin.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()

    result = await run_revoke("--socket", str(path), "--agent", "cursor")

    assert result.returncode == 1
    assert f"no gateway is answering at admin socket {path}" in result.stderr


async def test_revoke_cli_without_selector_usage_error(tmp_path: Path) -> None:
    """At least one of --user, --agent and --client is required."""
    result = await run_revoke("--socket", str(tmp_path / "admin.sock"))

    assert result.returncode == 2
    assert "name at least one of --user, --agent and --client" in result.stderr


async def test_revoke_cli_unreadable_config_suggests_socket(tmp_path: Path) -> None:
    """A config that cannot be read is reported with the --socket alternative."""
    result = await run_revoke(
        "--config", str(tmp_path / "missing.yaml"), "--user", "00u_alice"
    )

    assert result.returncode == 1
    assert "cannot read" in result.stderr
    assert "--socket PATH" in result.stderr


async def test_demo_serves_admin_socket(tmp_path: Path) -> None:
    """agent-proxy demo serves the admin API that agent-proxy revoke reaches."""
    var_dir = tmp_path / "var"
    admin_socket = var_dir / "admin.sock"
    log = tmp_path / "demo.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "demo",
                "--ephemeral-ports",
                "--var-dir",
                str(var_dir),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=CLI_ENV,
        )
    try:
        with anyio.fail_after(STARTUP_TIMEOUT):
            while "Press Ctrl-C" not in log.read_text():
                assert process.poll() is None, log.read_text()
                await anyio.sleep(0.1)
        result = await run_revoke("--socket", str(admin_socket), "--agent", "cursor")
    finally:
        await stop(process)

    assert f"admin API  {admin_socket}" in log.read_text()
    assert result.returncode == 0, result.stderr
    assert "No grant matched agent cursor" in result.stdout
    assert process.returncode == 0, log.read_text()
    assert not admin_socket.exists()
