"""Run a full demo in this process and write out its tokens, spans and files.

``python _no_secrets_run.py OUTDIR`` is started by ``test_no_secrets.py`` as
a subprocess, because it installs a global OpenTelemetry tracer provider
(always sampling, into an in-memory exporter) and the redacting JSON log
set-up, and a process can install a global tracer provider only once. Logs go
to this process's stderr, which the test reads.

The run does what clients of a real deployment do:

- it signs alice in through the official MCP client, with a confidential
  client registered by dynamic registration;
- it calls a tool on both backends, and the employees call needs an ID-JAG
  exchange;
- it refreshes the gateway tokens, and since ``upstream.recheck_after`` is
  0, the gateway refreshes the upstream tokens at the dev IdP too;
- it calls again with the new token;
- it signs in through the pre-registered client that makes cursor a verified
  agent;
- it has a denied sign-in.

Every token and secret of the run is collected, without hooks inside the
gateway, from:

- the HTTP traffic of the gateway and of the dev IdP, recorded by an ASGI
  wrapper around each app: token responses, form bodies of token requests,
  ``Authorization`` and ``Cookie`` headers, ``Set-Cookie`` and the ``code`` of
  redirects;
- the gateway's grant store (the upstream ID and refresh tokens it keeps);
- the client's token storage and the config (client secrets, API key).

OUTDIR receives ``tokens.json`` (label to values), ``spans.jsonl`` (every
string of every span) and ``files.json`` (the audit file and journal paths).
"""

from __future__ import annotations

import base64
import json
import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import anyio
import httpx
import msgspec
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from gateway.app import open_gateway
from gateway.demo.driver import REDIRECT_URI, MemoryTokenStorage, run_client
from gateway.demo.runner import DEMO_PORTS, _audit_path, demo_config, demo_peer_apps
from gateway.demo.serve import bind_socket, run_app
from gateway.events import GrantSelector
from gateway.logging_setup import configure_logging
from gateway.redaction import config_secrets, is_sensitive_key

MIN_TOKEN_LENGTH = 8


@dataclass
class Recorder:
    """Tokens and secrets seen in HTTP traffic, by label."""

    found: dict[str, set[str]] = field(default_factory=dict)

    def add(self, label: str, value: Any) -> None:
        if isinstance(value, str) and len(value) >= MIN_TOKEN_LENGTH:
            self.found.setdefault(label, set()).add(value)


class RecordingApp:
    """An ASGI wrapper that feeds a :class:`Recorder` from requests and responses."""

    def __init__(self, app: Any, name: str, recorder: Recorder) -> None:
        self.app = app
        self.name = name
        self.recorder = recorder

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in scope["headers"]}
        for key, value in parse_qsl(scope.get("query_string", b"").decode()):
            if key == "code" or is_sensitive_key(key):
                self.recorder.add(f"{self.name}.query.{key}", value)
        self._record_credentials(headers)
        body = bytearray()
        form: dict[str, str] = {}

        async def receive_recorded() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
                if not message.get("more_body") and "form" in headers.get(
                    "content-type", ""
                ):
                    form.update(parse_qsl(body.decode()))
                    for key, value in form.items():
                        if key in ("code", "code_verifier") or is_sensitive_key(key):
                            self.recorder.add(f"{self.name}.form.{key}", value)
            return message

        response = bytearray()
        response_headers: list[tuple[bytes, bytes]] = []

        async def send_recorded(message: Any) -> None:
            if message["type"] == "http.response.start":
                response_headers.extend(message.get("headers", []))
            elif message["type"] == "http.response.body":
                response.extend(message.get("body", b""))
                if not message.get("more_body"):
                    self._record_response(path, form, response_headers, bytes(response))
            await send(message)

        await self.app(scope, receive_recorded, send_recorded)

    def _record_credentials(self, headers: dict[str, str]) -> None:
        authorization = headers.get("authorization", "")
        scheme, _, credential = authorization.partition(" ")
        if credential:
            self.recorder.add(f"{self.name}.authorization.{scheme.lower()}", credential)
        if scheme.lower() == "basic" and credential:
            decoded = base64.b64decode(credential).decode()
            self.recorder.add(f"{self.name}.basic_secret", decoded.partition(":")[2])
        for cookie in headers.get("cookie", "").split(";"):
            self.recorder.add(f"{self.name}.cookie", cookie.partition("=")[2].strip())

    def _record_response(
        self,
        path: str,
        form: dict[str, str],
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        for name, value in headers:
            text = value.decode("latin-1")
            if name.lower() == b"location":
                query = dict(parse_qsl(urlsplit(text).query))
                self.recorder.add(f"{self.name}.redirect.code", query.get("code"))
            elif name.lower() == b"set-cookie":
                cookie = text.split(";", 1)[0].partition("=")[2]
                self.recorder.add(f"{self.name}.set_cookie", cookie)
        if not body.startswith(b"{"):
            return
        try:
            document = json.loads(body)
        except ValueError:
            return
        if not isinstance(document, dict):
            return
        grant = form.get("grant_type", "")
        for key in ("access_token", "refresh_token", "id_token", "client_secret"):
            label = f"{self.name}{path}.{key}"
            if key == "access_token" and grant.endswith("token-exchange"):
                label = f"{self.name}.id_jag"
            self.recorder.add(label, document.get(key))


def span_strings(span: ReadableSpan) -> list[str]:
    """Return every string a span would export."""
    values: list[Any] = [span.name]
    if span.status.description:
        values.append(span.status.description)
    values.extend((span.attributes or {}).values())
    values.extend(span.resource.attributes.values())
    for event in span.events:
        values.append(event.name)
        values.extend((event.attributes or {}).values())
    for link in span.links:
        values.extend((link.attributes or {}).values())
    strings: list[str] = []
    for value in values:
        if isinstance(value, str):
            strings.append(value)
        elif isinstance(value, tuple | list):
            strings.extend(str(item) for item in value)
    return strings


async def register_confidential_client(gateway_url: str) -> OAuthClientInformationFull:
    """Register a client that authenticates with a secret, as ``cursor``."""
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        response = await http.post(
            "/oauth2/register",
            json={
                "client_name": "cursor",
                "redirect_uris": [REDIRECT_URI],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "client_secret_post",
            },
        )
    response.raise_for_status()
    return OAuthClientInformationFull.model_validate(response.json())


async def refresh_gateway_tokens(
    gateway_url: str, storage: MemoryTokenStorage
) -> OAuthToken:
    """Refresh the client's gateway tokens at the gateway's token endpoint."""
    assert storage.tokens is not None and storage.client_info is not None
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        response = await http.post(
            "/oauth2/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": storage.tokens.refresh_token or "",
                "client_id": storage.client_info.client_id,
                "client_secret": storage.client_info.client_secret or "",
            },
        )
    response.raise_for_status()
    return OAuthToken.model_validate(response.json())


async def run(out: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    configure_logging(json=True, level="DEBUG")

    recorder = Recorder()
    var_dir = out / "var"
    sockets = {name: bind_socket() for name in DEMO_PORTS}
    urls = {
        name: f"http://127.0.0.1:{sock.getsockname()[1]}"
        for name, sock in sockets.items()
    }
    config = demo_config(urls, var_dir)
    # Every gateway refresh then refreshes the upstream tokens at the IdP too.
    config = msgspec.structs.replace(
        config, upstream=msgspec.structs.replace(config.upstream, recheck_after=0)
    )
    for label, secret in enumerate(config_secrets(config)):
        recorder.add(f"config.secret.{label}", secret)
    apps = demo_peer_apps(config, urls)

    async with AsyncExitStack() as stack:
        for name in ("employees", "partners"):
            await stack.enter_async_context(run_app(apps[name], sock=sockets[name]))
        await stack.enter_async_context(
            run_app(RecordingApp(apps["idp"], "idp", recorder), sock=sockets["idp"])
        )
        gateway = await stack.enter_async_context(open_gateway(config))
        await stack.enter_async_context(
            run_app(
                RecordingApp(gateway.asgi, "gateway", recorder),
                sock=sockets["gateway"],
            )
        )
        employees = urls["gateway"] + config.backends["employees"].path
        partners = urls["gateway"] + config.backends["partners"].path

        storage = MemoryTokenStorage()
        storage.client_info = await register_confidential_client(urls["gateway"])
        await run_client(
            employees,
            client_name="cursor",
            calls=[("list_employees", {}), ("list_employees", {})],
            storage=storage,
        )
        for token in (storage.tokens.access_token, storage.tokens.refresh_token):
            recorder.add("client.first_tokens", token)
        storage.tokens = await refresh_gateway_tokens(urls["gateway"], storage)
        for token in (storage.tokens.access_token, storage.tokens.refresh_token):
            recorder.add("client.refreshed_tokens", token)
        await run_client(
            employees,
            client_name="cursor",
            calls=[("list_employees", {})],
            storage=storage,
        )
        await run_client(partners, client_name="cursor", calls=[("list_partners", {})])
        # The pre-registered confidential client makes cursor a verified agent,
        # which signs in through its own upstream client and redeems the ID-JAG
        # with its own client at the employees authorization server.
        verified = MemoryTokenStorage()
        verified.client_info = OAuthClientInformationFull(
            client_id="cursor-desktop",
            client_secret=config.oauth.clients["cursor-desktop"].client_secret,
            token_endpoint_auth_method="client_secret_basic",
            redirect_uris=[REDIRECT_URI],  # type: ignore[list-item]
            grant_types=["authorization_code", "refresh_token"],
        )
        await run_client(
            employees,
            client_name="cursor",
            calls=[("list_employees", {})],
            storage=verified,
        )
        assert verified.tokens is not None
        recorder.add("client.verified_tokens", verified.tokens.access_token)
        # claude-code may not use partners: its sign-in is refused.
        try:
            await run_client(partners, client_name="claude-code", calls=[])
        except Exception as exc:
            print(f"denied sign-in as expected: {type(exc).__name__}", file=sys.stderr)

        for grant in await gateway.runtime.grants.find(GrantSelector()):
            recorder.add("grant.upstream_id_token", grant.upstream_id_token)
            recorder.add("grant.upstream_refresh_token", grant.upstream_refresh_token)
        await gateway.runtime.bus.drain()
        audit_path = _audit_path(config)

    provider.force_flush()
    tokens = {label: sorted(values) for label, values in recorder.found.items()}
    (out / "tokens.json").write_text(json.dumps(tokens, indent=1))
    with (out / "spans.jsonl").open("w") as spans:
        for span in exporter.get_finished_spans():
            spans.write(json.dumps({"name": span.name, "strings": span_strings(span)}))
            spans.write("\n")
    journals = sorted(str(path) for path in var_dir.rglob("*.journal*"))
    (out / "files.json").write_text(
        json.dumps({"audit": str(audit_path), "journals": journals})
    )


if __name__ == "__main__":
    anyio.run(run, Path(sys.argv[1]))
