"""Failure switches of the dev IdP, so tests can make it misbehave like a real IdP.

A test sets one of these attributes of the org server (``app.state.org``,
an :class:`~gateway.devidp.org.OrgAuthorizationServer`) on a running dev IdP
and clears it again with None. Nothing in the demo sets them.

- ``token_outage`` (:class:`TokenOutage`): the token endpoint fails like an
  outage;
- ``token_hold`` (:class:`TokenHold`): the token endpoint waits until the
  test releases it, so a test can act while a request is in flight;
- ``refresh_subject`` (:class:`SubjectSwap`): refreshed ID tokens name
  another user, as a broken or compromised IdP might.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
from litestar import Response

from ._http import NO_STORE, json_response

__all__ = ["SubjectSwap", "TokenHold", "TokenOutage"]


@dataclass(frozen=True, slots=True)
class TokenOutage:
    """The org token endpoint fails every matching request the same way.

    Attributes:
        status: The HTTP status to return, such as 503 or 429.
        error: The OAuth ``error`` code of the body; None sends a body without
            one, as a proxy in front of an IdP might.
        retry_after: The ``Retry-After`` header value; None sends none.
        grant_types: The grant types that fail; None means every grant type.
    """

    status: int = 503
    error: str | None = "temporarily_unavailable"
    retry_after: str | None = None
    grant_types: frozenset[str] | None = None

    def applies_to(self, grant_type: str | None) -> bool:
        """Return whether a request with this ``grant_type`` fails."""
        return self.grant_types is None or grant_type in self.grant_types

    def response(self) -> Response[bytes]:
        """Return the failure response."""
        headers = dict(NO_STORE)
        if self.retry_after is not None:
            headers["Retry-After"] = self.retry_after
        body: dict[str, str] = {}
        if self.error is not None:
            body["error"] = self.error
            body["error_description"] = "the dev IdP simulates an outage"
        return json_response(body, status_code=self.status, headers=headers)


@dataclass(slots=True)
class TokenHold:
    """The org token endpoint delays matching requests until :attr:`release` is set.

    Create it in the event loop that serves the dev IdP.

    Attributes:
        grant_types: The grant types that are held; None means every one.
        arrived: Set when the first matching request is being held.
        release: Set by the test to let held requests continue.
        held: How many requests were held so far.
    """

    grant_types: frozenset[str] | None = None
    arrived: anyio.Event = field(default_factory=anyio.Event)
    release: anyio.Event = field(default_factory=anyio.Event)
    held: int = 0

    def applies_to(self, grant_type: str | None) -> bool:
        """Return whether a request with this ``grant_type`` is held."""
        return self.grant_types is None or grant_type in self.grant_types

    async def wait(self) -> None:
        """Hold one request until :attr:`release` is set."""
        self.held += 1
        self.arrived.set()
        await self.release.wait()


@dataclass(frozen=True, slots=True)
class SubjectSwap:
    """Refreshed ID tokens name another user of the settings than the grant's.

    Attributes:
        user: Key of that user in the settings, such as ``bob``.
    """

    user: str
