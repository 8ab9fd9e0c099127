"""The per-client token bucket counts only requests that prove the client.

Anyone can send a known ``client_id``, so a bucket charged before the client
authenticates would let a stranger lock a client out of the token endpoint.
A confidential client's bucket is charged after its authentication; a public
client's after its code or refresh token was found valid for it. The gateway
comes from ``open_gateway`` with small limits and runs with uvicorn on a
loopback port, with the dev IdP where a sign-in is needed. Every request
names a fresh forwarded address, so only the per-client bucket can reject it.
"""

from __future__ import annotations

import pathlib

import pytest
from tests.integration.test_oauth_ratelimit import (
    REGISTRATION,
    SMALL_LIMITS,
    running_gateway,
    sign_in,
    token_form,
)

from gateway.demo.serve import bind_socket

pytestmark = pytest.mark.anyio

SECRET = "s" * 40
CONFIDENTIAL = {
    "busy-client": {
        "client_name": "cursor",
        "redirect_uris": ["http://127.0.0.1:5555/callback"],
        "client_secret": SECRET,
    },
    "other-client": {
        "client_name": "cursor",
        "redirect_uris": ["http://127.0.0.1:5555/callback"],
        "client_secret": SECRET,
    },
}
BOGUS_REFRESH = {"grant_type": "refresh_token", "refresh_token": "no-such-token"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def address(index: int) -> dict[str, str]:
    return {"x-forwarded-for": f"198.51.100.{index + 1}"}


async def test_token_unauthenticated_requests_spare_client_bucket(
    tmp_path: pathlib.Path,
) -> None:
    """Requests without the secret do not lock the real client out."""
    async with running_gateway(tmp_path, SMALL_LIMITS, clients=CONFIDENTIAL) as http:
        strangers = [
            await http.post(
                "/oauth2/token", data=token_form("busy-client"), headers=address(i)
            )
            for i in range(3)
        ]
        wrong_secret = [
            await http.post(
                "/oauth2/token",
                data=BOGUS_REFRESH,
                auth=("busy-client", "wrong"),
                headers=address(10 + i),
            )
            for i in range(3)
        ]
        real = await http.post(
            "/oauth2/token",
            data=BOGUS_REFRESH,
            auth=("busy-client", SECRET),
            headers=address(20),
        )
    assert [r.status_code for r in strangers] == [401, 401, 401]
    assert [r.status_code for r in wrong_secret] == [401, 401, 401]
    assert real.status_code == 400
    assert real.json()["error"] == "invalid_grant"


async def test_token_authenticated_requests_limited_per_client(
    tmp_path: pathlib.Path,
) -> None:
    """An authenticated client is limited across addresses; others are not."""
    async with running_gateway(tmp_path, SMALL_LIMITS, clients=CONFIDENTIAL) as http:
        statuses = []
        for index in range(4):
            response = await http.post(
                "/oauth2/token",
                data=BOGUS_REFRESH,
                auth=("busy-client", SECRET),
                headers=address(index),
            )
            statuses.append(response.status_code)
        limited = response
        in_form = await http.post(
            "/oauth2/token",
            data={
                **BOGUS_REFRESH,
                "client_id": "busy-client",
                "client_secret": SECRET,
            },
            headers=address(8),
        )
        other = await http.post(
            "/oauth2/token",
            data=BOGUS_REFRESH,
            auth=("other-client", SECRET),
            headers=address(9),
        )
    assert statuses == [400, 400, 400, 429]
    assert limited.headers["retry-after"] == "10"
    assert limited.headers["cache-control"] == "no-store"
    assert limited.json() == {
        "error": "temporarily_unavailable",
        "error_description": "too many requests from this client; retry after 10 s",
    }
    assert in_form.status_code == 429
    assert other.status_code == 400


async def test_token_public_invalid_requests_spare_client_bucket(
    tmp_path: pathlib.Path,
) -> None:
    """A public client's bucket ignores requests with an invalid code."""
    async with running_gateway(tmp_path, SMALL_LIMITS) as http:
        client = (await http.post("/oauth2/register", json=REGISTRATION)).json()
        statuses = [
            (
                await http.post(
                    "/oauth2/token",
                    data=token_form(client["client_id"]),
                    headers=address(index),
                )
            ).status_code
            for index in range(5)
        ]
    assert statuses == [400] * 5


async def test_token_public_valid_refreshes_limited_per_client(
    tmp_path: pathlib.Path,
) -> None:
    """A public client's valid requests, from any address, share one bucket."""
    async with running_gateway(tmp_path, SMALL_LIMITS, idp_sock=bind_socket()) as http:
        client = (await http.post("/oauth2/register", json=REGISTRATION)).json()
        client_id = client["client_id"]
        tokens = await sign_in(http, client_id, address="203.0.113.1")
        statuses = []
        refresh_token = tokens["refresh_token"]
        for index in range(3):
            response = await http.post(
                "/oauth2/token",
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": refresh_token,
                    "client_id": client_id,
                },
                headers=address(index),
            )
            statuses.append(response.status_code)
            if response.status_code == 200:
                refresh_token = response.json()["refresh_token"]
        limited = response
    assert statuses == [200, 200, 429]
    assert "from this client" in limited.json()["error_description"]


async def test_revoke_unauthenticated_requests_spare_client_bucket(
    tmp_path: pathlib.Path,
) -> None:
    """Failed revocation requests do not spend the client's token bucket."""
    async with running_gateway(tmp_path, SMALL_LIMITS, clients=CONFIDENTIAL) as http:
        strangers = [
            (
                await http.post(
                    "/oauth2/revoke",
                    data={"token": "x"},
                    auth=("busy-client", "wrong"),
                    headers=address(index),
                )
            ).status_code
            for index in range(4)
        ]
        real = await http.post(
            "/oauth2/token",
            data=BOGUS_REFRESH,
            auth=("busy-client", SECRET),
            headers=address(9),
        )
    assert strangers == [401] * 4
    assert real.status_code == 400
