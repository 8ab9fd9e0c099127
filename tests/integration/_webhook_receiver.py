"""A webhook receiver for the audit tests, run as a process of its own.

Usage: ``python _webhook_receiver.py PORT OUTFILE [KILL_SWITCH]``.

It appends each POST it receives to OUTFILE as one JSON line holding the
signature header and the raw body, flushed to disk before it responds 200.
Once the file KILL_SWITCH exists, the process exits abruptly right after
recording the next POST, without responding: a crash after the receiver
got a batch but before the sender learned of it.
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

PORT = int(sys.argv[1])
OUTFILE = sys.argv[2]
KILL_SWITCH = sys.argv[3] if len(sys.argv) > 3 else ""


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        record = {
            "signature": self.headers.get("x-agent-proxy-signature"),
            "content_type": self.headers.get("content-type"),
            "body": body.decode(),
        }
        with open(OUTFILE, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
            out.flush()
            os.fsync(out.fileno())
        if KILL_SWITCH and os.path.exists(KILL_SWITCH):
            os._exit(1)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


server = HTTPServer(("127.0.0.1", PORT), Handler)
print("ready", flush=True)
server.serve_forever()
