"""100 concurrent first requests through the exchange stage, against the dev IdP.

Each request runs the real exchange stage with the real credential service;
the IdP and the employees authorization server are the dev IdP on loopback.
Every POST the gateway sends is counted by an httpx hook, and each one waits
a little before it leaves, so all requests arrive while the exchange is open.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from _devidp_fixtures import DevIdpHarness
from _exchange_setup import Setup, open_setup
from test_exchange_stage_devidp import Backend, context, runtime_of, stage
from tests.unit.exchange.support import EventLog

from gateway.events import TokenExchanged
from gateway.mcp.response import GatewayResponse

pytestmark = pytest.mark.anyio

CONCURRENT = 100


@pytest.fixture
async def setup(devidp: DevIdpHarness) -> AsyncIterator[Setup]:
    async with open_setup(devidp) as value:
        yield value


async def test_exchange_stage_hundred_concurrent_first_requests_one_exchange(
    setup: Setup,
) -> None:
    """100 concurrent first requests of one user and backend make one exchange."""
    runtime = runtime_of(setup)
    principal = await setup.sign_in("alice")
    idp_before = setup.count("/oauth2/v1/token")
    backend = Backend(200)
    responses: list[GatewayResponse] = []
    setup.post_delay = 0.2

    async def one() -> None:
        response = await stage().handle(context(runtime, principal), backend)
        responses.append(response)

    async with EventLog(runtime.bus).running() as log:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for _ in range(CONCURRENT):
                    group.start_soon(one)

    assert [response.status for response in responses] == [200] * CONCURRENT
    assert setup.count("/oauth2/v1/token") - idp_before == 1
    assert setup.count("/oauth2/employees/v1/token") == 1
    assert len(backend.tokens) == CONCURRENT
    assert len(set(backend.tokens)) == 1
    caches = [event.cache for event in log.of(TokenExchanged)]
    assert caches.count("miss") == 1
    assert caches.count("hit") == CONCURRENT - 1
