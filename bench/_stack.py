"""Serve the dev IdP and both demo backends for a benchmark, in one process.

Usage: ``python bench/_stack.py OUT_DIR [PIPELINE]``, where ``PIPELINE`` is
an optional comma-separated stage list that replaces the demo config's
``pipeline``. Everything listens on 127.0.0.1 on free ports. The backends
respond with JSON bodies, not with event streams. Once all three accept
connections, the script writes to ``OUT_DIR``:

- ``gateway.yaml``: the packaged demo config with these addresses, a free
  port for the gateway and ``var_dir`` under ``OUT_DIR``;
- ``urls.json``: the base URL of ``gateway``, ``idp``, ``employees`` and
  ``partners``, and the partners API key and its header name.

It also serves the ``progress`` backend of ``_progress_backend.py``, which
responds with event streams, for ``streaming.py``. The gateway config adds it
as backend ``progress`` at ``/progress/mcp``, open to the ``cursor`` agent,
and ``urls.json`` adds its base URL under ``progress``.

``urls.json`` is written last, so its presence means the stack is ready. The
process serves until it gets SIGTERM or SIGINT.
"""

from __future__ import annotations

import json
import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import yaml
from _progress_backend import API_KEY, API_KEY_HEADER, create_progress_app

from gateway.config import StaticKeyAuth, load_config_text
from gateway.demo.runner import DEMO_PORTS, demo_config_text, demo_peer_apps
from gateway.demo.serve import bind_socket, run_app


def free_port() -> int:
    # The gateway runs in another process and binds its port itself, so the
    # port is only reserved until this socket closes. Another program could
    # take it in between, which is unlikely on a benchmark machine.
    with bind_socket("127.0.0.1", 0) as sock:
        port: int = sock.getsockname()[1]
    return port


def gateway_config_text(
    urls: dict[str, str], var_dir: Path, pipeline: str | None
) -> str:
    text = demo_config_text()
    for name, port in DEMO_PORTS.items():
        text = text.replace(f"http://127.0.0.1:{port}", urls[name])
    document = yaml.safe_load(text)
    document["server"]["port"] = int(urls["gateway"].rsplit(":", 1)[1])
    document["server"]["var_dir"] = str(var_dir)
    if "progress" in urls:
        document["backends"]["progress"] = {
            "path": "/progress/mcp",
            "url": urls["progress"] + "/mcp",
            "auth": {"kind": "static-key", "header": API_KEY_HEADER, "value": API_KEY},
        }
        document["agents"]["cursor"]["backends"].append("progress")
    if pipeline:
        stages = [name.strip() for name in pipeline.split(",")]
        document["pipeline"] = stages
        # The config check rejects settings for a stage that no chain uses.
        for name in list(document.get("stages", {})):
            if name not in stages:
                del document["stages"][name]
    return str(yaml.safe_dump(document, sort_keys=False))


async def serve(out_dir: Path, pipeline: str | None) -> None:
    sockets = {
        name: bind_socket("127.0.0.1", 0)
        for name in ("idp", "employees", "partners", "progress")
    }
    urls = {
        name: f"http://127.0.0.1:{sock.getsockname()[1]}"
        for name, sock in sockets.items()
    }
    urls["gateway"] = f"http://127.0.0.1:{free_port()}"
    config_text = gateway_config_text(urls, out_dir / "var", pipeline)
    config = load_config_text(config_text, source="bench/_stack.py")
    partners_auth = config.backends["partners"].auth
    assert isinstance(partners_auth, StaticKeyAuth)
    apps = demo_peer_apps(config, urls, json_response=True)
    apps["progress"] = create_progress_app()

    async with AsyncExitStack() as stack:
        for name, app in apps.items():
            await stack.enter_async_context(run_app(app, sock=sockets[name]))
        (out_dir / "gateway.yaml").write_text(config_text, encoding="utf-8")
        ready = {
            **urls,
            "partners_api_key": partners_auth.value,
            "partners_api_key_header": partners_auth.header,
        }
        staging = out_dir / "urls.json.tmp"
        staging.write_text(json.dumps(ready), encoding="utf-8")
        staging.rename(out_dir / "urls.json")
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                return


def main() -> None:
    if len(sys.argv) not in (2, 3):
        print("usage: python bench/_stack.py OUT_DIR [PIPELINE]", file=sys.stderr)
        sys.exit(2)
    pipeline = sys.argv[2] if len(sys.argv) == 3 else None
    anyio.run(serve, Path(sys.argv[1]), pipeline)


if __name__ == "__main__":
    main()
