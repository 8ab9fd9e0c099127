"""A loopback server of Client ID Metadata Documents, over https or http.

The test CA and the server certificate (for 127.0.0.1 and localhost) are made
with ``cryptography`` at start, so the gateway can verify the server with an
``ssl.SSLContext`` that trusts only that CA. The server speaks just enough
HTTP/1.1 for one GET per connection.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
from anyio.abc import ByteStream
from anyio.streams.tls import TLSListener
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Reply:
    """What the server sends for one path."""

    body: bytes
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class DocumentServer:
    """A running server: its base URL, the replies by path, and the hits."""

    url: str
    client_context: ssl.SSLContext
    replies: dict[str, Reply] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)


def _certificates() -> tuple[bytes, bytes, bytes]:
    """Return the CA certificate, and the server's certificate and key (PEM)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.DNSName("localhost"),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return (
        ca_cert.public_bytes(serialization.Encoding.PEM),
        cert.public_bytes(serialization.Encoding.PEM),
        key_pem,
    )


def _server_context(cert_pem: bytes, key_pem: bytes, tmp: str) -> ssl.SSLContext:
    cert_path, key_path = f"{tmp}/server.pem", f"{tmp}/server.key"
    with open(cert_path, "wb") as file:
        file.write(cert_pem)
    with open(key_path, "wb") as file:
        file.write(key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


@asynccontextmanager
async def serve_documents(
    tmp: str, *, tls: bool = True
) -> AsyncIterator[DocumentServer]:
    """Serve replies on 127.0.0.1 until the context exits.

    Args:
        tmp: A directory for the server's certificate and key files.
        tls: Serve https (True) or plain http.
    """
    ca_pem, cert_pem, key_pem = _certificates()
    client_context = ssl.create_default_context(cadata=ca_pem.decode())
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    scheme = "https" if tls else "http"
    server = DocumentServer(f"{scheme}://127.0.0.1:{port}", client_context)

    async def handle(stream: ByteStream) -> None:
        async with stream:
            request = b""
            try:
                while b"\r\n\r\n" not in request and len(request) < 16384:
                    request += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ssl.SSLError):
                return
            path = request.split(b" ", 2)[1].decode()
            server.hits.append(path)
            reply = server.replies.get(path, Reply(b"not found", status=404))
            if reply.delay:
                await anyio.sleep(reply.delay)
            headers = {
                "content-type": "application/json",
                "content-length": str(len(reply.body)),
                "connection": "close",
                **reply.headers,
            }
            head = f"HTTP/1.1 {reply.status} X\r\n" + "".join(
                f"{name}: {value}\r\n" for name, value in headers.items()
            )
            try:
                await stream.send(head.encode() + b"\r\n" + reply.body)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return

    serving = (
        TLSListener(
            listener,
            _server_context(cert_pem, key_pem, tmp),
            standard_compatible=False,
        )
        if tls
        else listener
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(serving.serve, handle)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()
    await serving.aclose()
