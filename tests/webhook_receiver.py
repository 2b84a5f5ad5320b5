"""A webhook receiver for tests: a real HTTP server on a loopback address, in a thread, whose
behaviour the test switches (answer 2xx, 500, hang, redirect, a huge body, or be down), and
which verifies every delivery's signature with the recipe of docs/webhooks.md, written here
again on purpose (an independent implementation, not the hub's code)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def verify(secret: str, header: str, body: bytes, tolerance_s: int = 300) -> bool:
    """docs/webhooks.md, "Verifying a delivery", in Python."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    timestamp = fields["t"]
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body,
                        hashlib.sha256).hexdigest()
    return (hmac.compare_digest(expected, fields.get("v1", ""))
            and abs(time.time() - int(timestamp)) <= tolerance_s)


@dataclass
class Delivery:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    signed: bool

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(json.loads(self.body))


@dataclass
class Receiver:
    """The server's state; `mode` picks the next answers: ok, 500, hang, redirect, huge."""

    secret: str
    host: str = "127.0.0.1"
    mode: str = "ok"
    requests: list[Delivery] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    huge_sent: int = 0
    arrivals: int = 0  # requests received, counted on arrival (a hung one too)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None
    port: int = 0

    @property
    def accepted(self) -> list[Delivery]:
        """Deliveries answered with a 2xx, in arrival order."""
        with self.lock:
            return [d for d in self.requests if 200 <= d.status < 300]

    def ids(self) -> list[str]:
        return [event["id"] for d in self.accepted for event in d.events]

    def url(self, path: str = "/hook") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_POST(self) -> None:
                with receiver.lock:
                    receiver.arrivals += 1
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                mode = receiver.mode
                status = {"ok": 200, "500": 500, "hang": 200, "redirect": 307,
                          "huge": 200}[mode]
                if mode == "hang":
                    receiver.release.wait(30)
                    status = 504  # the hub gave up long ago: this answer reaches nobody
                signed = verify(receiver.secret, self.headers.get("keyop-signature", ""), body)
                with receiver.lock:
                    receiver.requests.append(Delivery(self.path, dict(self.headers.items()),
                                                      body, status, signed))
                try:
                    self._answer(mode, status)
                except OSError:
                    pass  # the hub closed the connection (hang, huge)

            def _answer(self, mode: str, status: int) -> None:
                self.send_response(status)
                if mode == "redirect":
                    self.send_header("Location", receiver.url("/elsewhere"))
                if mode == "huge":
                    self.send_header("Content-Length", str(1 << 30))
                    self.end_headers()
                    chunk = b"x" * 65536
                    for _ in range(1 << 14):  # 1 GiB, never all read
                        self.wfile.write(chunk)
                        receiver.huge_sent += len(chunk)
                    return
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer((self.host, self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, name="webhook-receiver",
                         daemon=True).start()
        return self

    def stop(self) -> None:
        """Down: nothing listens on the port until `start()` again."""
        assert self.server is not None
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.server = None
        self.release = threading.Event()
