"""``agent-proxy revoke``: end grants at once in the running gateway.

The command reaches the gateway through its admin socket (see
:mod:`gateway.admin`), never over TCP. It finds the socket from the config's
``server.var_dir`` and ``server.admin_socket``, or from ``--socket``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import httpx

from gateway.config import load_config
from gateway.errors import ConfigError

__all__ = ["add_revoke_parser", "run_revoke"]

TIMEOUT = 30.0
"""Seconds allowed for the gateway to revoke the grants and respond."""

_DESCRIPTION = """\
End every grant that matches all the given selectors, at once, in the running
gateway: its access tokens get 401 from the next request, its refresh tokens
get invalid_grant, and the backend tokens cached for its user and agent are
dropped. The users' remembered consent for the clients concerned is withdrawn,
so clients must sign in again through the consent page. Run it as the user
that runs the gateway, in the same working directory when server.var_dir is
relative."""


def add_revoke_parser(commands: Any, default_config: Path) -> None:
    """Add the ``revoke`` subcommand to the ``agent-proxy`` subparsers."""
    revoke = commands.add_parser(
        "revoke",
        help="end grants at once in the running gateway",
        description=_DESCRIPTION,
    )
    revoke.add_argument(
        "--user", metavar="SUB", help="the user's subject (sub) at the upstream IdP"
    )
    revoke.add_argument(
        "--issuer",
        metavar="ISS",
        help="with --user: the user's upstream IdP issuer (default: any issuer)",
    )
    revoke.add_argument(
        "--agent", metavar="NAME", help="the agent name, as in the config's agents"
    )
    revoke.add_argument(
        "--client", metavar="CLIENT_ID", help="the OAuth client id at the gateway"
    )
    revoke.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        default=default_config,
        help="config file whose server.var_dir and server.admin_socket locate the "
        f"admin socket (default: {default_config})",
    )
    revoke.add_argument(
        "--socket",
        type=Path,
        metavar="PATH",
        help="the gateway's admin socket; when given, --config is not read",
    )


def run_revoke(args: argparse.Namespace) -> int:
    """Run ``agent-proxy revoke``; return the exit code.

    Returns:
        0 when the gateway responded, whatever the number of grants revoked;
        1 when no gateway responded at the socket or it rejected the request;
        2 for invalid arguments.
    """
    if args.user is None and args.agent is None and args.client is None:
        _error("name at least one of --user, --agent and --client")
        return 2
    if args.issuer is not None and args.user is None:
        _error("--issuer needs --user")
        return 2
    path = args.socket or _socket_from_config(args.config)
    if path is None:
        return 1
    body = {
        key: value
        for key, value in (
            ("user_iss", args.issuer),
            ("user_sub", args.user),
            ("agent_id", args.agent),
            ("client_id", args.client),
        )
        if value is not None
    }
    response = _post(path, body)
    if response is None:
        return 1
    if response.status_code != 200:
        _error(f"the gateway rejected the request: {_describe_error(response)}")
        return 1
    try:
        result = response.json()
    except ValueError:
        result = None
    if not isinstance(result, dict) or not isinstance(result.get("revoked"), int):
        _error(f"the process at admin socket {path} returned an invalid response")
        return 1
    _print_result(result, _describe_selector(args))
    return 0


def _socket_from_config(config_path: Path) -> Path | None:
    from gateway.admin import admin_socket_path

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        _error(f"cannot read {config_path} to find the admin socket:")
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        print("Pass the socket with --socket PATH instead.", file=sys.stderr)
        return None
    path = admin_socket_path(config)
    if path is None:
        _error(
            f"the admin API is off in {config_path} (server.admin_socket is empty), "
            "so grants cannot be revoked from the command line"
        )
    return path


def _post(path: Path, body: dict[str, str]) -> httpx.Response | None:
    if not path.exists():
        _error(
            f"no gateway is running with admin socket {path}: the file does not "
            "exist. Start the gateway with agent-proxy run, or pass the socket "
            "with --socket PATH."
        )
        return None
    transport = httpx.HTTPTransport(uds=str(path))
    try:
        with httpx.Client(transport=transport, timeout=TIMEOUT) as client:
            return client.post("http://agent-proxy-admin/grants/revoke", json=body)
    except httpx.TimeoutException:
        _error(f"the gateway at admin socket {path} did not answer in {TIMEOUT:g} s")
    except httpx.TransportError as exc:
        _error(
            f"no gateway is answering at admin socket {path} ({exc}). Start the "
            "gateway with agent-proxy run, or run this command as the user that "
            "runs it."
        )
    return None


def _describe_error(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error_description"), str):
        return str(body["error_description"])
    return f"HTTP {response.status_code}"


def _describe_selector(args: argparse.Namespace) -> str:
    parts = []
    if args.user is not None:
        parts.append(f"user {args.user}")
    if args.issuer is not None:
        parts.append(f"issuer {args.issuer}")
    if args.agent is not None:
        parts.append(f"agent {args.agent}")
    if args.client is not None:
        parts.append(f"client {args.client}")
    return ", ".join(parts)


def _print_result(body: dict[str, Any], selector: str) -> None:
    count = body["revoked"]
    if count == 0:
        print(f"No grant matched {selector}; nothing was revoked.")
    else:
        print(f"Revoked {count} grant{'' if count == 1 else 's'} matching {selector}:")
        for grant in body.get("grants", []):
            print(
                f"  user {grant.get('user_sub')}  agent {grant.get('agent_id')}  "
                f"client {grant.get('client_id')}"
            )
    consents = body.get("consents_revoked")
    if isinstance(consents, int) and consents > 0:
        print(
            f"Withdrew {consents} remembered consent{'' if consents == 1 else 's'}; "
            "the next sign-in shows the consent page."
        )


def _error(message: str) -> None:
    print(f"agent-proxy revoke: {message}", file=sys.stderr)
