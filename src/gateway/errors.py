"""The gateway's exception tree.

```
GatewayError
├── ConfigError          invalid configuration, raised only at start-up or reload
├── UpstreamError        the IdP or a backend authorization server failed
│   └── ExchangeError    a token exchange was rejected (carries the OAuth error)
└── StoreError           the state store failed
```

Request failures never surface as exceptions to the HTTP server: stages turn
them into events and responses in the protocol's own form.
"""

from __future__ import annotations

from collections.abc import Sequence


class GatewayError(Exception):
    """Base class of the gateway's own errors."""


class ConfigError(GatewayError):
    """An invalid configuration.

    Attributes:
        problems: One message per problem, each prefixed with its YAML path.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class UpstreamError(GatewayError):
    """An identity provider or authorization server call failed.

    Attributes:
        reason: A stable reason code such as ``idp_unavailable``.
        retry_after: Seconds after which a retry may succeed, when known.
    """

    def __init__(
        self, message: str, *, reason: str, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


class ExchangeError(UpstreamError):
    """A token exchange or JWT-bearer grant was rejected.

    Attributes:
        oauth_error: The RFC 6749 ``error`` code returned, such as ``invalid_grant``.
        step: ``token_exchange`` or ``jwt_bearer``.
    """

    def __init__(
        self,
        message: str,
        *,
        oauth_error: str,
        step: str,
        reason: str = "exchange_failed",
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message, reason=reason, retry_after=retry_after)
        self.oauth_error = oauth_error
        self.step = step


class StoreError(GatewayError):
    """The state store could not read or write."""
