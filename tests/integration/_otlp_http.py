"""A loopback OTLP/HTTP server for tests, with the request handling supplied.

The trace and log receivers differ only in the path they accept and what
they decode, so both are built on :func:`serve_otlp`.
"""

from __future__ import annotations

import contextlib
import gzip
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OtlpHandler = Callable[[str, bytes], tuple[int, bytes]]
"""Maps a request path and its decompressed body to a status and a reply body."""


@contextlib.contextmanager
def serve_otlp(handle: OtlpHandler) -> Iterator[str]:
    """Serve POST requests on a free loopback port; yield the base URL.

    A gzip ``Content-Encoding`` is decoded before ``handle`` is called. A
    status other than 200 is sent as an error with no protobuf body.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            status, reply = handle(self.path, body)
            if status != 200:
                self.send_error(status)
                return
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
