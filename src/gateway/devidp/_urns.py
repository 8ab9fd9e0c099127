"""Registered URIs of the OAuth grants and token types the dev IdP speaks."""

from __future__ import annotations

GRANT_AUTHORIZATION_CODE = "authorization_code"
GRANT_REFRESH_TOKEN = "refresh_token"
GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
"""RFC 8693 token exchange."""
GRANT_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
"""RFC 7523 JWT-bearer authorization grant."""

TOKEN_TYPE_ID_JAG = "urn:ietf:params:oauth:token-type:id-jag"
"""Identity Assertion JWT Authorization Grant (ID-JAG).

Defined by draft-ietf-oauth-identity-assertion-authz-grant.
"""
TOKEN_TYPE_ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
GRANT_PROFILE_ID_JAG = "urn:ietf:params:oauth:grant-profile:id-jag"

CLIENT_ASSERTION_JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
"""RFC 7523 section 2.2 client assertion type of ``private_key_jwt``."""

TYP_ID_JAG = "oauth-id-jag+jwt"
TYP_ACCESS_TOKEN = "at+jwt"
"""RFC 9068 ``typ`` of JWT access tokens."""
TYP_ID_TOKEN = "JWT"
