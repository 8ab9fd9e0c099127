"""Backend credentials: static kinds and Cross App Access (ID-JAG) with a cache."""

from gateway.exchange.cache import CachedToken, CacheKey, TokenCache
from gateway.exchange.discovery import AuthorizationServerDiscovery
from gateway.exchange.idjag import (
    IdJagExchanger,
    IssuedToken,
    ServerUnavailableError,
    UpstreamTokenClient,
    check_id_jag,
)
from gateway.exchange.service import CredentialService, ObtainedCredentials

__all__ = [
    "AuthorizationServerDiscovery",
    "CacheKey",
    "CachedToken",
    "CredentialService",
    "IdJagExchanger",
    "IssuedToken",
    "ObtainedCredentials",
    "ServerUnavailableError",
    "TokenCache",
    "UpstreamTokenClient",
    "check_id_jag",
]
