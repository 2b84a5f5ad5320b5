"""The service manager's end of the notify protocol, for tests and the dev stack: a datagram
socket that records each notification (`common.sdnotify`) with its arrival time."""

from __future__ import annotations

import socket
import threading
import time


class NotifyListener:
    """Binds an `AF_UNIX` datagram socket at `path` (give it to a daemon as `NOTIFY_SOCKET`)
    and records what arrives on a thread of its own."""

    def __init__(self, path: str) -> None:
        self.address = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(path)
        self._sock.settimeout(0.1)
        self._lock = threading.Lock()
        self._received: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify-listener", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            with self._lock:
                self._received.append((time.monotonic(), data.decode()))

    def received(self) -> list[tuple[float, str]]:
        """(monotonic arrival time, datagram) of everything so far."""
        with self._lock:
            return list(self._received)

    def messages(self) -> list[str]:
        return [message for _, message in self.received()]

    def lines(self, key: str) -> list[tuple[float, str]]:
        """(arrival, value) of each `KEY=value` line with this key."""
        prefix = key + "="
        return [(at, line[len(prefix):]) for at, message in self.received()
                for line in message.splitlines() if line.startswith(prefix)]

    def wait_for(self, key: str, contains: str = "", timeout: float = 10.0) -> str:
        """The first `KEY=value` whose value contains `contains`; TimeoutError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            for _, value in self.lines(key):
                if contains in value:
                    return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {key}= containing {contains!r} in {timeout}s: "
                                   f"{self.messages()[-5:]}")
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()
