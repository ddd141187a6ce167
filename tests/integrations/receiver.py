"""A real HTTP webhook receiver for tests: it verifies every signature with the
``standardwebhooks`` package (as an integrator would) and can be down, slow or failing."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    webhook_id: str
    body: bytes
    payload: dict[str, Any]
    headers: dict[str, str]


@dataclass
class Receiver:
    port: int
    secret: str = ""
    # How to answer: "ok", "error" (503), "redirect" (307 elsewhere) or "slow" (answer after
    # slow_seconds).
    mode: str = "ok"
    slow_seconds: float = 2.0
    # Answer slowly only to the first request of each webhook id (forces a timed-out
    # attempt whose retry then succeeds: a duplicate).
    slow_once: bool = False
    received: list[Received] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/autopay"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {name.lower(): value for name, value in self.headers.items()}
                try:
                    payload = Webhook(receiver.secret).verify(body, headers)
                except WebhookVerificationError as exc:
                    with receiver._lock:
                        receiver.rejected.append(str(exc))
                    self.send_response(400)
                    self.end_headers()
                    return
                with receiver._lock:
                    first_time = all(
                        item.webhook_id != headers["webhook-id"] for item in receiver.received
                    )
                    receiver.received.append(
                        Received(headers["webhook-id"], body, payload, headers)
                    )
                if receiver.mode == "slow" or (receiver.slow_once and first_time):
                    time.sleep(receiver.slow_seconds)
                if receiver.mode == "redirect":
                    self.send_response(307)
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                    self.end_headers()
                    return
                status = 503 if receiver.mode == "error" else 200
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps({"received": True}).encode())

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def ids(self) -> set[str]:
        with self._lock:
            return {item.webhook_id for item in self.received}
