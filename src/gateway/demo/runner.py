"""Run the whole demo in one process: dev IdP, demo backends and the gateway."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import msgspec

from gateway.app import Gateway, open_gateway, var_path
from gateway.config import GatewayConfig, IdJagAuth, StaticKeyAuth, load_config_text
from gateway.demo.backends.employees import create_employees_app
from gateway.demo.backends.partners import create_partners_app
from gateway.demo.serve import bind_socket, run_app
from gateway.devidp.app import create_devidp_app
from gateway.devidp.settings import demo_settings

DEMO_PORTS = {"gateway": 8000, "idp": 9000, "employees": 8001, "partners": 8002}
"""The fixed demo addresses; the packaged config names these ports."""


def demo_config_text() -> str:
    """Return the packaged demo config (``config/gateway.yaml``) as text."""
    return files("gateway.demo").joinpath("gateway.yaml").read_text(encoding="utf-8")


@dataclass(frozen=True)
class DemoStack:
    """A running demo.

    Attributes:
        gateway: The running gateway.
        config: The config it runs with.
        urls: Base URL per component (``gateway``, ``idp``, ``employees``,
            ``partners``).
        audit_path: Where the audit events are written.
    """

    gateway: Gateway
    config: GatewayConfig
    urls: dict[str, str]
    audit_path: Path

    def mcp_url(self, backend: str) -> str:
        """Return a backend's MCP endpoint at the gateway."""
        return self.urls["gateway"] + self.config.backends[backend].path


def demo_config(
    urls: dict[str, str], var_dir: Path, *, text: str | None = None
) -> GatewayConfig:
    """Return the packaged demo config with its addresses replaced by ``urls``.

    ``text`` replaces the packaged file's text, as a reload reads it.
    """
    text = demo_config_text() if text is None else text
    for name, port in DEMO_PORTS.items():
        text = text.replace(f"http://127.0.0.1:{port}", urls[name])
    config = load_config_text(text, source="gateway/demo/gateway.yaml")
    server = msgspec.structs.replace(
        config.server,
        var_dir=str(var_dir),
        port=int(urls["gateway"].rsplit(":", 1)[1]),
    )
    return msgspec.structs.replace(config, server=server)


def demo_peer_apps(
    config: GatewayConfig, urls: dict[str, str], *, json_response: bool = False
) -> dict[str, Any]:
    """Build the dev IdP and the two demo backends that ``config`` points at.

    Args:
        config: A demo config: ``employees`` uses ``id-jag`` and ``partners``
            a static key.
        urls: Base URLs of ``idp`` and ``gateway``.
        json_response: Make the backends answer each POST with one JSON body.

    Returns:
        The ASGI apps by name: ``idp``, ``employees`` and ``partners``.
    """
    employees_auth = config.backends["employees"].auth
    partners_auth = config.backends["partners"].auth
    assert isinstance(employees_auth, IdJagAuth)
    assert isinstance(partners_auth, StaticKeyAuth)
    idp = create_devidp_app(
        demo_settings(
            issuer=urls["idp"],
            gateway_url=urls["gateway"],
            employees_resource=employees_auth.resource,
        )
    )
    employees = create_employees_app(
        resource=employees_auth.resource,
        authorization_server=employees_auth.issuer,
        jwks_url=employees_auth.issuer + "/v1/keys",
        json_response=json_response,
    )
    partners = create_partners_app(
        api_key=partners_auth.value,
        header=partners_auth.header,
        json_response=json_response,
    )
    return {"idp": idp, "employees": employees, "partners": partners}


@asynccontextmanager
async def run_demo(
    *, ephemeral: bool = False, var_dir: Path = Path("var")
) -> AsyncIterator[DemoStack]:
    """Start the dev IdP, both demo backends and the gateway, all on 127.0.0.1.

    Args:
        ephemeral: Bind free ports instead of the fixed demo ports (tests).
        var_dir: Where the gateway keeps keys, journals and the audit file.

    Raises:
        OSError: A fixed demo port is already in use.
    """
    sockets: dict[str, socket.socket] = {}
    try:
        for name, port in DEMO_PORTS.items():
            sockets[name] = bind_socket("127.0.0.1", 0 if ephemeral else port)
    except OSError as exc:
        for sock in sockets.values():
            sock.close()
        port = DEMO_PORTS[name]
        msg = (
            f"cannot listen on 127.0.0.1:{port} for the demo {name}: {exc.strerror}; "
            "stop whatever uses that port, or run the demo with --ephemeral-ports"
        )
        raise OSError(exc.errno, msg) from exc
    urls = {
        name: f"http://127.0.0.1:{sock.getsockname()[1]}"
        for name, sock in sockets.items()
    }
    config = demo_config(urls, var_dir)
    apps = demo_peer_apps(config, urls)

    async with AsyncExitStack() as stack:
        await stack.enter_async_context(run_app(apps["idp"], sock=sockets["idp"]))
        await stack.enter_async_context(
            run_app(apps["employees"], sock=sockets["employees"])
        )
        await stack.enter_async_context(
            run_app(apps["partners"], sock=sockets["partners"])
        )
        gateway = await stack.enter_async_context(open_gateway(config))
        await stack.enter_async_context(
            run_app(
                gateway.asgi,
                sock=sockets["gateway"],
                header_timeout=config.server.header_timeout,
            )
        )
        yield DemoStack(
            gateway=gateway,
            config=config,
            urls=urls,
            audit_path=_audit_path(config),
        )


def _audit_path(config: GatewayConfig) -> Path:
    from gateway.app import audit_config
    from gateway.audit.config import JsonlSinkConfig

    for sink in audit_config(config).sinks:
        if isinstance(sink, JsonlSinkConfig):
            return var_path(config, sink.path)
    return var_path(config, "audit.jsonl")
