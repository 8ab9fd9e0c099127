"""Discovery documents: RFC 9728 resource metadata, RFC 8414 server metadata, JWKS."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from litestar import Request, Response, get

from gateway.oauth.pre_registered import ASSERTION_ALGORITHMS
from gateway.oauth.resources import backend_for_path
from gateway.oauth.responses import json_response, oauth_error

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gateway.runtime import Runtime

SUPPORTED_SCOPES = ("mcp",)
"""Base scopes of every access token. A token also gets the tool scopes
(``stages.authorize.tool_scopes``) that its client requests."""

CLIENT_AUTH_METHODS = (
    "none",
    "client_secret_post",
    "client_secret_basic",
    "private_key_jwt",
)
"""Client authentication at the token and revocation endpoints.

``private_key_jwt`` is for clients pre-registered with a public JWK Set
(``oauth.clients``) and for Client ID Metadata Document clients whose
document has a ``jwks`` or ``jwks_uri``. Dynamic registration does not offer
it. Its assertions must be signed with one of
:data:`~gateway.oauth.pre_registered.ASSERTION_ALGORITHMS`.
"""

PRM_PATH = "/.well-known/oauth-protected-resource"
AS_METADATA_PATH = "/.well-known/oauth-authorization-server"

_DISCOVERY_CACHE = "public, max-age=300"


def resource_metadata_url(public_url: str, backend_path: str) -> str:
    """Return the RFC 9728 metadata URL of a backend path (path-aware, section 3.1)."""
    return public_url + PRM_PATH + backend_path


def protected_resource_metadata(runtime: Runtime, backend: str) -> dict[str, Any]:
    """Return the RFC 9728 document of one backend resource.

    ``scopes_supported`` lists ``mcp`` and the backend's tool scopes from the
    ``authorize`` stage settings.
    """
    # Imported here: the authorize stage imports this module.
    from gateway.stages.authorize import known_scopes

    return {
        "resource": runtime.resource_for(backend),
        "authorization_servers": [runtime.issuer],
        "bearer_methods_supported": ["header"],
        "scopes_supported": known_scopes(runtime.config.stages, backend),
        "resource_name": backend,
    }


def authorization_server_metadata(
    issuer: str,
    *,
    client_metadata_documents: bool = True,
    scopes: Sequence[str] = SUPPORTED_SCOPES,
) -> dict[str, Any]:
    """Return the RFC 8414 document of the gateway as authorization server.

    Args:
        issuer: The gateway's issuer.
        client_metadata_documents: Whether a ``client_id`` may be the URL of a
            Client ID Metadata Document (``oauth.client_metadata.enabled``).
        scopes: The scopes the gateway issues (``scopes_supported``).
    """
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/oauth2/authorize",
        "token_endpoint": f"{issuer}/oauth2/token",
        "registration_endpoint": f"{issuer}/oauth2/register",
        "revocation_endpoint": f"{issuer}/oauth2/revoke",
        "revocation_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
        "revocation_endpoint_auth_signing_alg_values_supported": list(
            ASSERTION_ALGORITHMS
        ),
        "jwks_uri": f"{issuer}/oauth2/jwks",
        "scopes_supported": list(scopes),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "authorization_response_iss_parameter_supported": True,
        "client_id_metadata_document_supported": client_metadata_documents,
    }


@get(f"{PRM_PATH}/{{backend_path:path}}", sync_to_thread=False)
def get_resource_metadata(
    request: Request[Any, Any, Any], backend_path: str
) -> Response[bytes]:
    """Serve the metadata of the backend whose MCP path follows the prefix."""
    runtime: Runtime = request.app.state.runtime
    name = backend_for_path(runtime.config, backend_path)
    if name is None:
        return _not_found(f"no MCP endpoint is served at {backend_path!r}")
    return json_response(
        protected_resource_metadata(runtime, name), cache=_DISCOVERY_CACHE
    )


@get(PRM_PATH, sync_to_thread=False)
def get_root_resource_metadata(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Serve the root metadata document only when there is exactly one backend.

    With several backends no single document is right, and one naming another
    backend's resource would send clients to the wrong audience. The handler
    returns 404 instead, so that clients use the path-aware URL.
    """
    runtime: Runtime = request.app.state.runtime
    backends = list(runtime.config.backends)
    if len(backends) != 1:
        return _not_found(
            "this gateway serves several MCP endpoints; fetch "
            f"{PRM_PATH}/<endpoint path>, such as {PRM_PATH}/<backend>/mcp"
        )
    return json_response(
        protected_resource_metadata(runtime, backends[0]), cache=_DISCOVERY_CACHE
    )


@get(AS_METADATA_PATH, sync_to_thread=False)
def get_authorization_server_metadata(
    request: Request[Any, Any, Any],
) -> Response[bytes]:
    """Serve the RFC 8414 metadata for an issuer without a path."""
    runtime: Runtime = request.app.state.runtime
    if urlsplit(runtime.issuer).path not in ("", "/"):
        return _not_found(
            f"the issuer is {runtime.issuer}; "
            f"fetch {AS_METADATA_PATH} followed by the issuer's path"
        )
    return json_response(_server_metadata(runtime), cache=_DISCOVERY_CACHE)


@get(f"{AS_METADATA_PATH}/{{issuer_path:path}}", sync_to_thread=False)
def get_path_authorization_server_metadata(
    request: Request[Any, Any, Any], issuer_path: str
) -> Response[bytes]:
    """Serve the RFC 8414 metadata for an issuer with a path (section 3.1 insertion)."""
    runtime: Runtime = request.app.state.runtime
    path = urlsplit(runtime.issuer).path
    if not path or path.rstrip("/") != issuer_path.rstrip("/"):
        return _not_found(
            f"no authorization server has the issuer path {issuer_path!r}"
        )
    return json_response(_server_metadata(runtime), cache=_DISCOVERY_CACHE)


@get("/oauth2/jwks", sync_to_thread=False)
def get_jwks(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Serve the public keys that verify the gateway's access tokens."""
    runtime: Runtime = request.app.state.runtime
    return json_response(runtime.keys.jwks(), cache=_DISCOVERY_CACHE)


def _server_metadata(runtime: Runtime) -> dict[str, Any]:
    from gateway.stages.authorize import known_scopes

    return authorization_server_metadata(
        runtime.issuer,
        client_metadata_documents=runtime.config.oauth.client_metadata.enabled,
        scopes=known_scopes(runtime.config.stages),
    )


def _not_found(description: str) -> Response[bytes]:
    return oauth_error("not_found", description, status=404)
