"""Remembered consent covers the scopes approved, not a step-up to more."""

from __future__ import annotations

import pytest

from gateway.oauth.consents import ConsentStore
from gateway.store import MemoryStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def approved_browser(consents: ConsentStore, scopes: list[str]) -> str:
    return await consents.remember(
        user_iss="https://idp.test",
        user_sub="alice",
        client_id="client-1",
        backend="partners",
        browser_id=None,
        scopes=scopes,
    )


async def test_consent_step_up_scope_not_remembered() -> None:
    """A request for a scope never approved gets no remembered user."""
    consents = ConsentStore(MemoryStore())
    browser = await approved_browser(consents, ["mcp"])
    same = await consents.remembered_user(
        browser, client_id="client-1", backend="partners", scopes=["mcp"]
    )
    more = await consents.remembered_user(
        browser,
        client_id="client-1",
        backend="partners",
        scopes=["mcp", "partners:detail"],
    )
    assert same is not None
    assert same.user_sub == "alice"
    assert more is None


async def test_consent_approved_scopes_accumulate() -> None:
    """After approving the step-up, both scope sets are remembered."""
    consents = ConsentStore(MemoryStore())
    await approved_browser(consents, ["mcp"])
    browser = await approved_browser(consents, ["mcp", "partners:detail"])
    remembered = await consents.remembered_user(
        browser,
        client_id="client-1",
        backend="partners",
        scopes=["partners:detail"],
    )
    assert remembered is not None
