"""The ``agent-proxy`` command line: run, demo, check, revoke, keys."""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import structlog

from gateway.audit.cli import add_audit_commands, run_audit
from gateway.cli_check import add_check_parser, run_check
from gateway.cli_keys import add_keys_parser, run_keys_command
from gateway.cli_revoke import add_revoke_parser, run_revoke
from gateway.config import GatewayConfig, load_config
from gateway.config.model import TelemetryConfig
from gateway.config.okta_checks import okta_warnings, read_raw_config
from gateway.errors import ConfigError
from gateway.telemetry import configure_logging, configure_tracing

if TYPE_CHECKING:
    from gateway.reload import ConfigSource

DEFAULT_CONFIG = Path("config/gateway.yaml")

log = structlog.get_logger("gateway.cli")

# uvloop, where installed, runs the same asyncio code with less CPU per request.
_BACKEND_OPTIONS = {"use_uvloop": importlib.util.find_spec("uvloop") is not None}


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    quiet = args.command == "demo" and args.check
    configure_logging(
        json=args.log_format == "json" if args.log_format else None,
        level="WARNING" if quiet else "INFO",
    )
    try:
        return _dispatch(args)
    except BrokenPipeError:
        # The reader of stdout went away (``agent-proxy check | head``): stop
        # quietly, and keep Python from reporting the pipe again at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    """Run the chosen command; returns its exit code."""
    if args.command == "check":
        return run_check(args)
    if args.command == "revoke":
        return run_revoke(args)
    if args.command == "keys":
        return run_keys_command(args)
    if args.command == "audit":
        return run_audit(args)
    if args.command == "run":
        return _run(args.config)
    configure_tracing(_demo_telemetry())
    return _demo(
        check=args.check, var_dir=Path(args.var_dir), ephemeral=args.ephemeral_ports
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agent-proxy",
        description="Okta Agent Proxy: an MCP security gateway.",
    )
    parser.add_argument(
        "--log-format",
        choices=["json", "console"],
        help="log output format (default: console on a terminal, JSON otherwise)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="serve the gateway")
    run.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"config file (default: {DEFAULT_CONFIG})",
    )

    demo = commands.add_parser(
        "demo",
        help="run the dev IdP, the demo backends and the gateway on 127.0.0.1",
    )
    demo.add_argument(
        "--check",
        action="store_true",
        help="drive the official MCP client through every step, then exit 0 "
        "only if all behaved as expected",
    )
    demo.add_argument(
        "--ephemeral-ports",
        action="store_true",
        help="listen on free ports instead of 8000, 8001, 8002 and 9000",
    )
    demo.add_argument(
        "--var-dir",
        default="var",
        help="directory for keys, journals and var/audit.jsonl (default: var)",
    )

    add_revoke_parser(commands, DEFAULT_CONFIG)
    add_keys_parser(commands, DEFAULT_CONFIG)
    add_audit_commands(commands)

    add_check_parser(commands, DEFAULT_CONFIG)
    return parser


def _load(path: Path) -> GatewayConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        _print_problems(path, exc.problems)
        return None


def _print_problems(path: Path, problems: list[str]) -> None:
    count = f"{len(problems)} problem{'' if len(problems) == 1 else 's'}"
    print(f"{path}: invalid configuration ({count}):", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)


def _run(path: Path) -> int:
    from gateway.admin import (
        AdminSocket,
        admin_socket_path,
        bind_admin_socket,
        serve_admin,
    )
    from gateway.app import open_gateway
    from gateway.chains import plan_backend_chains
    from gateway.demo.serve import bind_socket, serve_app
    from gateway.reload import ConfigReloader, ConfigSource

    config = _load(path)
    if config is None:
        return 1
    try:
        # Report chain problems before anything binds a port or writes a key.
        plan_backend_chains(config)
    except ConfigError as exc:
        _print_problems(path, exc.problems)
        return 1
    # Tracing is set up from the loaded config, before any server starts.
    configure_tracing(config.telemetry)
    for warning in okta_warnings(config, read_raw_config(path)):
        log.warning(
            "config.warning",
            code=warning.code,
            key=warning.path,
            detail=warning.message,
        )
    host, port = config.server.host, config.server.port
    try:
        sock = bind_socket(host, port)
    except OSError as exc:
        print(
            f"agent-proxy run: cannot listen on {host}:{port}: {exc.strerror}; "
            f"stop whatever uses the port or change server.port in {path}",
            file=sys.stderr,
        )
        return 1
    admin: AdminSocket | None = None
    admin_path = admin_socket_path(config)
    if admin_path is not None:
        try:
            admin = bind_admin_socket(admin_path)
        except OSError as exc:
            sock.close()
            print(f"agent-proxy run: {exc.strerror or exc}", file=sys.stderr)
            return 1

    async def serve() -> None:
        async with open_gateway(config) as gateway, anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, tg.cancel_scope)
            await tg.start(ConfigReloader(gateway, ConfigSource.file(path)).run)
            if admin is not None:
                tg.start_soon(serve_admin, gateway.base, admin)
            log.info("gateway.listening", address=f"{host}:{port}")
            await serve_app(
                gateway.asgi,
                sock=sock,
                log_level="warning",
                header_timeout=config.server.header_timeout,
            )

    try:
        anyio.run(serve, backend_options=_BACKEND_OPTIONS)
    except ConfigError as exc:
        _print_problems(path, exc.problems)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        if admin is not None:
            admin.remove()
    return 0


def _demo_telemetry() -> TelemetryConfig:
    """Return the ``telemetry`` section of the packaged demo config."""
    from gateway.config import load_config_text
    from gateway.demo.runner import demo_config_text

    return load_config_text(demo_config_text(), source="demo").telemetry


def _demo(*, check: bool, var_dir: Path, ephemeral: bool) -> int:
    from gateway.demo.check import check_demo
    from gateway.demo.runner import run_demo

    async def demo() -> int:
        async with run_demo(var_dir=var_dir, ephemeral=ephemeral) as stack:
            if check:
                _print_banner(stack, check=check)
                ok = await check_demo(stack)
                print("demo check passed" if ok else "demo check FAILED")
                return 0 if ok else 1
            return await _serve_demo(stack)

    try:
        return anyio.run(demo, backend_options=_BACKEND_OPTIONS)
    except OSError as exc:
        print(f"agent-proxy demo: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


async def _serve_demo(stack: object) -> int:
    """Serve a running demo, with its admin API, until SIGTERM or SIGINT.

    ``SIGHUP`` and changes of the packaged demo config reload it.
    """
    from gateway.admin import admin_socket_path, bind_admin_socket, serve_admin
    from gateway.demo.runner import DemoStack
    from gateway.reload import ConfigReloader

    assert isinstance(stack, DemoStack)
    admin_path = admin_socket_path(stack.config)
    admin = None
    if admin_path is not None:
        try:
            admin = bind_admin_socket(admin_path)
        except OSError as exc:
            print(f"agent-proxy demo: {exc.strerror or exc}", file=sys.stderr)
            return 1
    _print_banner(stack, check=False, admin_socket=admin_path)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, tg.cancel_scope)
            reloader = ConfigReloader(stack.gateway, _demo_source(stack))
            await tg.start(reloader.run)
            if admin is not None:
                tg.start_soon(serve_admin, stack.gateway.base, admin)
            await anyio.sleep_forever()
    finally:
        if admin is not None:
            admin.remove()
    return 0


def _demo_source(stack: object) -> ConfigSource:
    """Return the packaged demo config, read with the running demo's addresses."""
    from importlib.resources import files

    from gateway.demo.runner import DemoStack, demo_config
    from gateway.reload import ConfigSource

    assert isinstance(stack, DemoStack)
    path = Path(str(files("gateway.demo").joinpath("gateway.yaml")))
    var_dir = Path(stack.config.server.var_dir)
    return ConfigSource(path, lambda text: demo_config(stack.urls, var_dir, text=text))


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` on SIGTERM or SIGINT, so shutdown drains the audit journal."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("gateway.stopping", signal=signal.Signals(signum).name)
            scope.cancel()
            return


def _print_banner(
    stack: object, *, check: bool, admin_socket: Path | None = None
) -> None:
    from gateway.demo.runner import DemoStack

    assert isinstance(stack, DemoStack)
    urls = stack.urls
    print("Okta Agent Proxy demo")
    print(f"  gateway    {urls['gateway']}")
    print(f"  dev IdP    {urls['idp']}  (users: alice, bob; no password)")
    print(f"  employees  {stack.mcp_url('employees')}  (ID-JAG to {urls['employees']})")
    print(
        f"  partners   {stack.mcp_url('partners')}  (static key to {urls['partners']})"
    )
    print(f"  audit log  {stack.audit_path}")
    if admin_socket is not None:
        print(f"  admin API  {admin_socket}  (agent-proxy revoke)")
    if check:
        print("Checking the demo with the official MCP client:")
    else:
        print("Connect an MCP client to one of the two gateway URLs above. Clients")
        print('registered as "cursor" or "MCP Inspector" may use both backends,')
        print('"claude-code" only employees. Press Ctrl-C to stop.')
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
