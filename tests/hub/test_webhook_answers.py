"""Webhook answers a plain HTTP server would not give: a 2xx whose body stops short of its
Content-Length (or of its last chunk) and a 2xx sent only after `webhooks.timeout_s` are not
deliveries: the cursor stays and the same batch is sent again."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import pytest
from test_webhooks import ListFeed, _config, _cursor, _running, _secret_file, _until

from hub.store import Store
from hub.webhooks.deliverer import Deliverer

BAD_ANSWERS = {
    "short-body": b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nok",
    "short-chunks": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n",
    "late": b"",  # answered only after the hub's timeout
}
GOOD = b"HTTP/1.1 204 No Content\r\n\r\n"


class RawReceiver:
    """A loopback TCP server answering the first `bad` requests with `answer` bytes and then
    closing; every later request with a 204. Records the feed positions of each request."""

    def __init__(self, answer: bytes, bad: int, late: threading.Event | None = None) -> None:
        self.answer, self.bad, self.late = answer, bad, late
        self.firsts: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            while True:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                headers, _, body = head.partition(b"\r\n\r\n")
                fields = dict(line.split(b": ", 1) for line in headers.split(b"\r\n")[1:])
                length = int(fields[b"Content-Length"])
                while len(body) < length:
                    body += conn.recv(65536)
                self.firsts.append(fields[b"keyop-feed-first"].decode())
                if len(self.firsts) <= self.bad:
                    if self.late is not None:
                        self.late.wait(10)
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    else:
                        conn.sendall(self.answer)
                    return
                conn.sendall(GOOD)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("mode", sorted(BAD_ANSWERS))
def test_a_broken_or_late_2xx_is_not_a_delivery(mode: str, tmp_path: Path) -> None:
    late = threading.Event() if mode == "late" else None
    bad = 1 if late is not None else 2  # once late, the next answer comes in time
    receiver = RawReceiver(BAD_ANSWERS[mode], bad=bad, late=late)
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    config = _config(f"http://127.0.0.1:{receiver.port}/hook", db, _secret_file(tmp_path))
    store = Store(db)
    feed = ListFeed()
    for _ in range(3):
        feed.append("acme")

    async def scenario() -> None:
        async with _running(Deliverer(config, store, feed)) as deliverer:
            state = deliverer.endpoints[0].state
            await _until(lambda: state.failures >= 1)
            assert _cursor(store) == 0, "the cursor moved without a complete 2xx"
            if late is not None:
                assert "no answer within" in (state.last_error or "")
                late.set()
            await _until(lambda: _cursor(store) == 3)
            assert state.failures == bad

    try:
        asyncio.run(scenario())
        assert receiver.firsts == ["1"] * (bad + 1)  # the same batch again, then settled
    finally:
        receiver.close()
        store.close()
