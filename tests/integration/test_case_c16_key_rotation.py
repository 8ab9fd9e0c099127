"""Case C16: key rotation never locks out valid tokens; unknown kids stay cheap.

The gateway verifies its access tokens with the keys in its key file. When
another process that shares the file rotates it (a second replica, or one
restarted with another algorithm), a token signed with the new key names a
``kid`` this process has not loaded. The gateway then reads the file again,
at most once per 30 seconds whatever the number of such tokens, and keeps
the keys it has when the file cannot be read. The tokens are real JWTs sent
to the assembled demo gateway over HTTP.

Covered elsewhere and not repeated here, for the JWK Set of the upstream
IdP that signs ID tokens (``test_oauth_upstream.py``):
``test_id_token_key_rotation_refetched_once``,
``test_id_token_unknown_kid_burst_rate_limited``,
``test_id_token_concurrent_unknown_kid_single_fetch``,
``test_jwks_failed_refresh_keeps_last_good`` and
``test_jwks_never_loaded_unavailable``.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from _case_support import sign_in
from _transport_harness import MCP_HEADERS, initialize_body

import gateway.oauth.keys as keys_module
from gateway.demo.runner import DemoStack, run_demo
from gateway.oauth.keys import SigningKeys

pytestmark = pytest.mark.anyio


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[DemoStack]:
    async with run_demo(ephemeral=True, var_dir=tmp_path) as running:
        yield running


@pytest.fixture
def key_file_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record each read of a key file; the real reader still does the reading."""
    reads: list[Path] = []
    read = keys_module._read_key_file

    def counting_read(path: Path) -> Any:
        reads.append(path)
        return read(path)

    monkeypatch.setattr(keys_module, "_read_key_file", counting_read)
    return reads


async def issued_claims(demo: DemoStack) -> tuple[str, dict[str, Any]]:
    storage = await sign_in(demo, "employees", user="alice")
    assert storage.tokens is not None
    token = storage.tokens.access_token
    _header, claims = demo.gateway.runtime.keys.verify(token, algorithms=["ES256"])
    return token, claims


async def status_with(client: httpx.AsyncClient, demo: DemoStack, token: str) -> int:
    response = await client.post(
        demo.mcp_url("employees"),
        content=msgspec.json.encode(initialize_body()),
        headers={**MCP_HEADERS, "authorization": f"Bearer {token}"},
    )
    return response.status_code


async def test_key_rotated_by_other_process_accepted(
    demo: DemoStack, key_file_reads: list[Path]
) -> None:
    """A token signed with a key another process added is accepted (C16)."""
    old_token, claims = await issued_claims(demo)
    key_path = demo.gateway.runtime.keys.path
    assert key_path is not None
    other_replica = SigningKeys.load_or_create(key_path)
    other_replica.rotate()
    new_token = other_replica.sign(claims)
    key_file_reads.clear()
    async with httpx.AsyncClient(timeout=10.0) as client:
        new_status = await status_with(client, demo, new_token)
        old_status = await status_with(client, demo, old_token)
        published = (await client.get(demo.urls["gateway"] + "/oauth2/jwks")).json()
    assert new_status == 200
    assert old_status == 200
    assert len(key_file_reads) == 1
    kids = [key["kid"] for key in published["keys"]]
    assert kids[0] == other_replica.kid
    assert len(kids) == 2


async def test_in_process_rotation_keeps_old_tokens(demo: DemoStack) -> None:
    """After the gateway rotates its own key, old and new tokens both work (C16)."""
    old_token, claims = await issued_claims(demo)
    keys = demo.gateway.runtime.keys
    old_kid = keys.kid
    keys.rotate()
    new_token = keys.sign(claims)
    async with httpx.AsyncClient(timeout=10.0) as client:
        statuses = [
            await status_with(client, demo, token) for token in (old_token, new_token)
        ]
    assert keys.kid != old_kid
    assert statuses == [200, 200]


async def test_bogus_kid_burst_rejected_with_one_reload(
    demo: DemoStack, key_file_reads: list[Path]
) -> None:
    """100 tokens with unknown kids get 401 and cause one key file read (C16)."""
    valid_token, claims = await issued_claims(demo)
    keys = demo.gateway.runtime.keys
    header = {"alg": "ES256", "typ": "at+jwt"}
    forged = []
    for _ in range(100):
        # A real signature by a real key, under a kid the gateway never had.
        token = keys.sign(claims)
        head = msgspec.json.encode({**header, "kid": secrets.token_hex(8)})
        forged.append(_replace_header(token, head))
    statuses: list[int] = []

    async def send(client: httpx.AsyncClient, token: str) -> None:
        statuses.append(await status_with(client, demo, token))

    limits = httpx.Limits(max_connections=10)
    async with httpx.AsyncClient(timeout=10.0, limits=limits) as client:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as task_group:
                for token in forged:
                    task_group.start_soon(send, client, token)
        still_valid = await status_with(client, demo, valid_token)
    assert statuses == [401] * 100
    assert len(key_file_reads) == 1
    assert still_valid == 200


async def test_unreadable_key_file_keeps_loaded_keys(
    demo: DemoStack, key_file_reads: list[Path]
) -> None:
    """A key file that turned invalid leaves the loaded keys in use (C16)."""
    valid_token, claims = await issued_claims(demo)
    keys = demo.gateway.runtime.keys
    assert keys.path is not None
    keys.path.write_text("{not json")
    unknown = _replace_header(
        keys.sign(claims),
        msgspec.json.encode({"alg": "ES256", "typ": "at+jwt", "kid": "k-new"}),
    )
    async with httpx.AsyncClient(timeout=10.0) as client:
        unknown_status = await status_with(client, demo, unknown)
        valid_status = await status_with(client, demo, valid_token)
        fresh_status = await status_with(client, demo, keys.sign(claims))
    assert len(key_file_reads) == 1
    assert unknown_status == 401
    assert valid_status == 200
    assert fresh_status == 200


def _replace_header(token: str, header: bytes) -> str:
    encoded = base64.urlsafe_b64encode(header).rstrip(b"=").decode()
    _old, payload, signature = token.split(".")
    return f"{encoded}.{payload}.{signature}"
