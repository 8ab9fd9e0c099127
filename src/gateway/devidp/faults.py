"""Failure switches of the dev IdP, so tests can make it fail like an IdP outage.

A test sets :attr:`OrgAuthorizationServer.token_outage
<gateway.devidp.org.OrgAuthorizationServer.token_outage>` on a running dev IdP
(``app.state.org``) and clears it again with None. Nothing in the demo sets it.
"""

from __future__ import annotations

from dataclasses import dataclass

from litestar import Response

from ._http import NO_STORE, json_response

__all__ = ["TokenOutage"]


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
