"""``agent-proxy run`` shuts down cleanly on SIGTERM, as ``docker stop`` sends it.

The dev IdP and both demo backends run in the test process on loopback, and
the gateway runs as ``python -m gateway run`` in its own process.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from _grant_support import (
    FrontDoor,
    bind_sockets,
    running_peers,
    sign_in,
    stack_config,
    urls_of,
    write_config,
)
from tests.integration.test_grant_revoke_cli import start_gateway, wait_until_serving

pytestmark = pytest.mark.anyio


def log_events(log: Path) -> list[dict[str, Any]]:
    events = []
    for line in log.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


async def test_run_sigterm_drains_audit_exit_zero(tmp_path: Path) -> None:
    """SIGTERM stops the gateway with exit 0 after its audit events are written."""
    sockets = bind_sockets()
    urls = urls_of(sockets)
    sockets.pop("gateway").close()
    var_dir = tmp_path / "var"
    config = stack_config(urls, var_dir)
    config_path = write_config(config, tmp_path / "gateway.yaml")
    log = tmp_path / "gateway.log"

    async with running_peers(sockets, urls, config):
        process = start_gateway(config_path, log)
        try:
            await wait_until_serving(
                process, urls["gateway"], var_dir / "admin.sock", log
            )
            async with httpx.AsyncClient(base_url=urls["gateway"]) as browser:
                runtime: Any = None
                await sign_in(FrontDoor(urls["gateway"], urls["idp"], runtime, browser))
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                while process.poll() is None:
                    await anyio.sleep(0.05)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    events = log_events(log)
    stopping = [event for event in events if event.get("event") == "gateway.stopping"]
    audit = (var_dir / "audit.jsonl").read_text()
    assert process.returncode == 0, log.read_text()
    assert [event.get("signal") for event in stopping] == ["SIGTERM"]
    assert "gateway.stopped" in [event.get("event") for event in events]
    assert '"type":"TokenIssued"' in audit.replace(" ", "")
    assert not (var_dir / "admin.sock").exists()
