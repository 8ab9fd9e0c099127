"""The embedded dev IdP: an Okta-like org server plus backend authorization servers.

The org authorization server signs users in (OIDC, code with PKCE, rotating
refresh tokens) and issues ID-JAGs by token exchange. One backend authorization
server per configured backend redeems ID-JAGs (RFC 7523 JWT-bearer grant) for
access tokens that the demo backends accept. State lives in memory.
"""

from .app import create_devidp_app
from .keys import SigningKey
from .settings import (
    DevBackendAS,
    DevClient,
    DevIdpSettings,
    DevRasClient,
    DevUser,
    demo_settings,
)

__all__ = [
    "DevBackendAS",
    "DevClient",
    "DevIdpSettings",
    "DevRasClient",
    "DevUser",
    "SigningKey",
    "create_devidp_app",
    "demo_settings",
]
