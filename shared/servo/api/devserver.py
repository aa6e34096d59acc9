"""``servo dev``: the local control plane behind a small HTTP API (127.0.0.1:3000)."""

from __future__ import annotations

import json
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from servo.api.routes import TextResponse, route
from servo.cli import render
from servo.cli.workspace import Workspace
from servo.local import LocalControlPlane
from servo.local_automation import LocalAutomation

MAX_BODY = 1 << 20


def make_handler(ws: Workspace) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "servo-dev"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _serve(self, method: str) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._send(413, {"error": "request body too large", "status": 413})
                return
            body = self.rfile.read(length) if length else b""
            status, data = route(ws.ports, method, url.path, dict(parse_qsl(url.query)), body)
            self._send(status, data)

        def _send(self, status: int, data: Any) -> None:
            text = isinstance(data, TextResponse)
            raw = str(data).encode() if text else json.dumps(data, default=str).encode()
            self.send_response(status)
            self.send_header("Content-Type", data.content_type if text else "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

    return Handler


def serve(ws: Workspace, host: str = "127.0.0.1", port: int = 3000) -> None:
    httpd = ThreadingHTTPServer((host, port), make_handler(ws))
    address = f"http://{host}:{httpd.server_address[1]}"
    info = ws.home / "dev.json"
    info.write_text(json.dumps({"pid": os.getpid(), "address": address}))
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with LocalControlPlane(ws.ports, ws.home), LocalAutomation(ws.ports, ws.home):
        render.console.print(f"servo dev: API on {address} (Ctrl-C to stop)")
        try:
            httpd.serve_forever(poll_interval=0.2)
        finally:
            httpd.server_close()
            info.unlink(missing_ok=True)
