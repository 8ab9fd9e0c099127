"""The admin API: a small JSON API on a Unix domain socket, never on TCP.

``agent-proxy run`` and ``agent-proxy demo`` serve it next to the gateway at
``server.admin_socket`` under ``server.var_dir`` (``var/admin.sock`` by
default), and ``agent-proxy revoke`` calls it. The socket file has mode 0600,
so only the user running the gateway (and root) can connect. That file mode is
the only access control, so keep ``var_dir`` writable by that user alone.

Endpoint:

``POST /grants/revoke``
    Body: a JSON object with at least one of ``user_sub``, ``agent_id`` and
    ``client_id``, and optionally ``user_iss`` together with ``user_sub``.
    Every grant that matches all given fields is revoked at once. Its access
    tokens get 401 at the MCP endpoints from the next request, and its
    refresh tokens get ``invalid_grant``. The backend tokens cached for its
    user and agent are dropped, and ``GrantRevoked`` (reason ``admin_revoke``)
    is published for it. The remembered consents the selector covers are
    withdrawn, so the next sign-in shows the consent page, and
    ``ConsentRevoked`` is published for each (see
    :func:`~gateway.oauth.grant_revocation.withdraw_consents`). Returns 200
    with ``{"revoked": <count>, "consents_revoked": <count>, "grants":
    [...]}``, also when nothing matched. A bad body gets 400 with
    ``{"error": "invalid_request", "error_description": "..."}``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import structlog
from litestar import Litestar, Request, Response, post
from litestar.datastructures import State

from gateway.app import var_path
from gateway.config import GatewayConfig
from gateway.demo.serve import serve_app
from gateway.events import GrantSelector
from gateway.oauth.grant_revocation import (
    ADMIN_REVOKE,
    announce_revoked,
    withdraw_consents,
)

if TYPE_CHECKING:
    from gateway.runtime import Runtime

__all__ = [
    "ADMIN_SOCKET_MODE",
    "AdminSocket",
    "RevokeRequest",
    "admin_socket_path",
    "bind_admin_socket",
    "create_admin_app",
    "serve_admin",
]

log = structlog.get_logger("gateway.admin")

ADMIN_SOCKET_MODE = 0o600
"""File mode of the admin socket: read and write for its owner only."""

_MAX_SOCKET_PATH = 107
"""Longest ``sun_path`` on Linux, in bytes (108 with the terminating NUL)."""

_MAX_BODY_BYTES = 16 * 1024
_STAGE = "admin"

_Value = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


class RevokeRequest(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True
):
    """The body of ``POST /grants/revoke``; see the module docstring."""

    user_iss: _Value | None = None
    user_sub: _Value | None = None
    agent_id: _Value | None = None
    client_id: _Value | None = None

    def selector(self) -> GrantSelector:
        """Return the grant selector, or raise ValueError when it selects nothing."""
        if self.user_iss is not None and self.user_sub is None:
            msg = "user_iss selects nothing without user_sub"
            raise ValueError(msg)
        if self.user_sub is None and self.agent_id is None and self.client_id is None:
            msg = "name at least one of user_sub, agent_id and client_id"
            raise ValueError(msg)
        return GrantSelector(
            user_iss=self.user_iss,
            user_sub=self.user_sub,
            agent_id=self.agent_id,
            client_id=self.client_id,
        )


_decoder = msgspec.json.Decoder(RevokeRequest)


def admin_socket_path(config: GatewayConfig) -> Path | None:
    """Return where the admin socket goes, or None when the admin API is off."""
    if not config.server.admin_socket:
        return None
    return var_path(config, config.server.admin_socket)


@dataclass
class AdminSocket:
    """A bound admin socket and the file it created.

    Attributes:
        path: The socket file.
        sock: The bound socket; :func:`serve_admin` takes it over.
        inode: The file's inode, so that :meth:`remove` leaves alone a file
            that another process created at the same path meanwhile.
    """

    path: Path
    sock: socket.socket
    inode: int

    def remove(self) -> None:
        """Close the socket and remove its file, unless another process replaced it."""
        self.sock.close()
        try:
            current = self.path.lstat()
        except FileNotFoundError:
            return
        if current.st_ino == self.inode:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def bind_admin_socket(path: Path) -> AdminSocket:
    """Bind a Unix stream socket at ``path``; its file has mode 0600.

    A socket file that no process listens on any more (a gateway that was
    killed) is replaced. The file is created with that mode, so no other user
    can open it even for a moment.

    Raises:
        OSError: The path is too long, is not a socket, another process
            listens there, or the socket cannot be created. The message names
            the cause and the fix.
    """
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        msg = (
            f"the admin socket path {path} is longer than {_MAX_SOCKET_PATH} bytes; "
            "set server.admin_socket to a shorter absolute path"
        )
        raise OSError(errno.ENAMETOOLONG, msg)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask is per process, but this runs at start-up before any request.
    previous_umask = os.umask(0o777 & ~ADMIN_SOCKET_MODE)
    try:
        sock.bind(os.fspath(path))
    except OSError as exc:
        sock.close()
        msg = f"cannot create the admin socket {path}: {exc.strerror or exc}"
        raise OSError(exc.errno, msg) from exc
    finally:
        os.umask(previous_umask)
    os.chmod(path, ADMIN_SOCKET_MODE)
    return AdminSocket(path=path, sock=sock, inode=path.lstat().st_ino)


def _remove_stale_socket(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        msg = (
            f"{path} exists and is not a socket; remove it or set "
            "server.admin_socket to another path"
        )
        raise OSError(errno.EEXIST, msg)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(os.fspath(path))
    except OSError:
        # No process listens, so a gateway stopped without removing it.
        log.info("admin.stale_socket_removed", socket=str(path))
        path.unlink()
        return
    finally:
        probe.close()
    msg = (
        f"another process already serves the admin socket {path}; stop that "
        "gateway or give this one another server.var_dir or server.admin_socket"
    )
    raise OSError(errno.EADDRINUSE, msg)


def create_admin_app(runtime: Runtime) -> Litestar:
    """Return the admin API application for a running gateway."""
    return Litestar(
        route_handlers=[revoke_grants],
        state=State({"runtime": runtime}),
        openapi_config=None,
        # The default logging config would replace the redacting root handler.
        logging_config=None,
        debug=False,
        request_max_body_size=_MAX_BODY_BYTES,
    )


@post("/grants/revoke", status_code=200)
async def revoke_grants(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Revoke every grant that matches the request body; see the module docstring."""
    runtime: Runtime = request.app.state.runtime
    try:
        selector = _decoder.decode(await request.body()).selector()
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
        return _json({"error": "invalid_request", "error_description": str(exc)}, 400)
    grants = await runtime.grants.revoke_matching(selector)
    for grant in grants:
        await announce_revoked(
            runtime, grant, reason=ADMIN_REVOKE, stage=_STAGE, selector=selector
        )
    consents = await withdraw_consents(runtime, selector, grants, stage=_STAGE)
    log.info(
        "admin.grants_revoked",
        revoked=len(grants),
        consents_revoked=consents,
        **{name: value for name, value in msgspec.structs.asdict(selector).items()},
    )
    return _json(
        {
            "revoked": len(grants),
            "consents_revoked": consents,
            "grants": [
                {
                    "grant_id": grant.grant_id,
                    "client_id": grant.client_id,
                    "agent_id": grant.agent_id,
                    "user_iss": grant.user_iss,
                    "user_sub": grant.user_sub,
                }
                for grant in grants
            ],
        },
        200,
    )


async def serve_admin(runtime: Runtime, admin: AdminSocket) -> None:
    """Serve the admin API on a socket from :func:`bind_admin_socket` until cancelled.

    The socket is closed when serving stops; call :meth:`AdminSocket.remove`
    afterwards to remove its file.
    """
    log.info("admin.listening", socket=str(admin.path))
    await serve_app(create_admin_app(runtime), sock=admin.sock, log_level="warning")


def _json(body: dict[str, Any], status: int) -> Response[bytes]:
    return Response(
        msgspec.json.encode(body),
        status_code=status,
        media_type="application/json",
        headers={"cache-control": "no-store"},
    )
