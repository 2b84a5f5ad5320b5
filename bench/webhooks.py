"""The webhook part of `keyop bench hub --webhooks`: a loopback receiver in a process of its
own (so it does not share the hub's interpreter), and the hub.yaml lines that give each
supplier one endpoint on it. The receiver answers every POST with an empty 200 on a
keep-alive connection and counts the events (`keyop-events`) and requests it took."""

from __future__ import annotations

import multiprocessing as mp
import os
import secrets
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def _receiver_main(port: Any, events: Any, requests: Any, stop: Any) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: one connection per endpoint

        def log_message(self, *_args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with events.get_lock():
                events.value += int(self.headers.get("keyop-events", "0"))
                requests.value += 1
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    class Server(ThreadingHTTPServer):
        request_queue_size = 256  # 50 endpoints connect at once

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port.value = server.server_address[1]
    server.timeout = 0.2
    while not stop.is_set():
        server.handle_request()
    server.server_close()


class BenchReceiver:
    """The receiver process: `start()`, then `events`, `requests`; `stop()`."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._port = ctx.Value("i", 0)
        self._events = ctx.Value("q", 0)
        self._requests = ctx.Value("q", 0)
        self._stop = ctx.Event()
        self._process = ctx.Process(target=_receiver_main, daemon=True, args=(
            self._port, self._events, self._requests, self._stop))

    def start(self, timeout: float = 60.0) -> BenchReceiver:
        import time

        self._process.start()
        deadline = time.monotonic() + timeout
        while self._port.value == 0:
            if time.monotonic() > deadline or not self._process.is_alive():
                raise RuntimeError("the webhook receiver did not start")
            time.sleep(0.05)  # polls a value another process sets: nothing to await
        return self

    @property
    def events(self) -> int:
        return int(self._events.value)

    @property
    def requests(self) -> int:
        return int(self._requests.value)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._port.value}/{path}"

    def stop(self) -> None:
        self._stop.set()
        self._process.join(10)


def webhook_yaml(receiver: BenchReceiver, names: list[str], work: Path, endpoint: str = "erp"
                 ) -> tuple[list[str], dict[str, str]]:
    """The hub-level `webhooks:` lines, and per supplier its endpoint's flow mapping."""
    secret = work / "webhook.secret"
    if not secret.exists():
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
    section = ["webhooks: {allow: [127.0.0.1], poll_s: 0.2}"]
    endpoints = {name: f'webhooks: {{{endpoint}: {{url: "{receiver.url(name)}", '
                       f'secret_file: "{secret}", batch: 500, start: oldest}}}}'
                 for name in names}
    return section, endpoints


def wait_drained(status: Any) -> None:
    """Until every endpoint's saved cursor is at its supplier's feed head."""
    import time

    while any(row["lag"] != 0 for row in status.rows()):
        time.sleep(0.05)  # polls the database another thread writes: nothing to await


def drain_rate(config: Any, receiver: BenchReceiver) -> dict[str, Any]:
    """Webhook capacity: endpoints new to the database (`config`'s) deliver the whole stored
    feed as fast as they can; events per second from start to every cursor at the head."""
    import asyncio
    import time

    from hub.feed import Feed
    from hub.store import Store
    from hub.webhooks.cursors import Cursors
    from hub.webhooks.deliverer import Deliverer
    from hub.webhooks.status import WebhookStatus

    store = Store(config.hub.database_url(), config)
    feed = Feed(store)
    status = WebhookStatus(config, Cursors(store), feed)
    before = receiver.events

    async def run() -> float:
        deliverer = Deliverer(config, store, feed)
        stop = asyncio.Event()
        started = time.monotonic()
        task = asyncio.create_task(deliverer.run(stop))
        await asyncio.to_thread(wait_drained, status)
        elapsed = time.monotonic() - started
        stop.set()
        await task
        await deliverer.close()
        return elapsed

    try:
        elapsed = asyncio.run(run())
    finally:
        store.close()
    events = receiver.events - before
    return {"webhook_drain_events": events, "webhook_drain_s": round(elapsed, 3),
            "webhook_drain_events_per_s": round(events / elapsed)}
