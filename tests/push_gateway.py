"""A push gateway on loopback that implements the Matrix Push Gateway API
(``POST /_matrix/push/v1/notify``) and keeps what it is sent: the hospital's gateway (Sygnal or
a vendor's) in the tests' place, so a notification is checked where it leaves Synapse."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

NOTIFY_PATH = "/_matrix/push/v1/notify"


class PushGateway:
    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if self.path != NOTIFY_PATH:
                    self.send_response(404)
                    self.end_headers()
                    return
                notification = json.loads(body)["notification"]
                with gateway._lock:
                    gateway.notifications.append(notification)
                answer = json.dumps({"rejected": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{NOTIFY_PATH}"

    def received(self, pushkey: str) -> list[dict[str, Any]]:
        """Notifications for one device (pusher), oldest first."""
        with self._lock:
            return [n for n in self.notifications if any(d.get("pushkey") == pushkey for d in n.get("devices", []))]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
