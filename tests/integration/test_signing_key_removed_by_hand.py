"""A leaked signing key deleted from the key file stops verifying at once.

The gateway, the dev IdP and both demo backends run on loopback. The test
rotates the key as ``agent-proxy keys rotate`` does, then deletes the old
key's entry from the JSON file as an operator would with an editor. The
gateway checks its key file every 20 ms here instead of every 5 s.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from _grant_support import grant_stack, initialize, sign_in

from gateway.mcp.jsonrpc import decode
from gateway.oauth import key_rotation
from gateway.oauth.keys import SigningKeys

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def fast_key_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(key_rotation, "POLL_INTERVAL", 0.02)


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)


def delete_key(path: Path, kid: str) -> None:
    """Remove one key from the key file, as an edit by hand does."""
    document = json.loads(path.read_text())
    document["keys"] = [key for key in document["keys"] if key["kid"] != kid]
    path.write_text(json.dumps(document, indent=2))


async def test_key_deleted_by_hand_verified_token_rejected(tmp_path: Path) -> None:
    """A token verified before its key was deleted from the file gets 401."""
    async with grant_stack(tmp_path) as stack:
        keys = stack.runtime.keys
        old_kid = keys.kid
        client, tokens = await sign_in(stack.front)
        first = await initialize(stack.front, tokens["access_token"])
        assert keys.path is not None
        SigningKeys.load(keys.path, schedule=keys.schedule).rotate()
        await wait_until(lambda: keys.kid != old_kid)
        still = await initialize(stack.front, tokens["access_token"])

        delete_key(keys.path, old_kid)
        await wait_until(lambda: not keys.knows(old_kid))
        rejected = await initialize(stack.front, tokens["access_token"])
        refreshed = await stack.front.refresh(client, tokens["refresh_token"])
        accepted = await initialize(stack.front, refreshed.json()["access_token"])

    assert first.status_code == 200, first.text
    assert still.status_code == 200, still.text
    assert rejected.status_code == 401
    assert decode(rejected.content)["error"]["data"]["reason"] == "invalid_token"
    assert refreshed.status_code == 200, refreshed.text
    assert accepted.status_code == 200, accepted.text
