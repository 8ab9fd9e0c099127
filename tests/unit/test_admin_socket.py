"""bind_admin_socket: the admin API's Unix socket file, its mode and old files."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import msgspec
import pytest

from gateway.admin import admin_socket_path, bind_admin_socket
from gateway.config import GatewayConfig


def test_admin_socket_created_owner_only(tmp_path: Path) -> None:
    """The socket file gets mode 0600 and its missing parent directory is created."""
    path = tmp_path / "var" / "admin.sock"
    admin = bind_admin_socket(path)
    try:
        mode = path.lstat().st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600
    finally:
        admin.remove()
    assert not path.exists()


def test_admin_socket_stale_file_replaced(tmp_path: Path) -> None:
    """A socket file no process listens on, left by a killed gateway, is replaced."""
    path = tmp_path / "admin.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    admin = bind_admin_socket(path)
    admin.remove()


def test_admin_socket_in_use_rejected(tmp_path: Path) -> None:
    """A socket another gateway listens on is left alone and reported."""
    path = tmp_path / "admin.sock"
    first = bind_admin_socket(path)
    first.sock.listen()
    try:
        with pytest.raises(OSError, match="another process already serves"):
            bind_admin_socket(path)
        assert path.exists()
    finally:
        first.remove()


def test_admin_socket_regular_file_rejected(tmp_path: Path) -> None:
    """A regular file at the socket path is not removed."""
    path = tmp_path / "admin.sock"
    path.write_text("keep me")
    with pytest.raises(OSError, match="exists and is not a socket"):
        bind_admin_socket(path)
    assert path.read_text() == "keep me"


def test_admin_socket_path_too_long_rejected(tmp_path: Path) -> None:
    """A path longer than a Unix socket address allows is reported with the fix."""
    with pytest.raises(OSError, match=r"set server\.admin_socket to a shorter"):
        bind_admin_socket(tmp_path / ("d" * 120) / "admin.sock")


def test_admin_socket_remove_spares_replacement(tmp_path: Path) -> None:
    """remove() leaves a file that another process created at the same path."""
    path = tmp_path / "admin.sock"
    admin = bind_admin_socket(path)
    path.unlink()
    path.write_text("new")
    admin.remove()
    assert path.read_text() == "new"


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ({"var_dir": "/srv/gw"}, "/srv/gw/admin.sock"),
        ({"var_dir": "/srv/gw", "admin_socket": "/run/gw.sock"}, "/run/gw.sock"),
        ({"var_dir": "/srv/gw", "admin_socket": ""}, None),
    ],
)
def test_admin_socket_path_from_config(
    server: dict[str, str], expected: str | None
) -> None:
    """server.admin_socket is relative to var_dir; empty turns the API off."""
    config = msgspec.convert(
        {
            "server": {"public_url": "http://127.0.0.1:8000", **server},
            "upstream": {"issuer": "http://127.0.0.1:9000", "client_id": "gw"},
            "backends": {},
        },
        GatewayConfig,
    )
    path = admin_socket_path(config)
    assert (str(path) if path else None) == expected
