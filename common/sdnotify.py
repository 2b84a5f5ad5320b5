"""systemd's service notification protocol (sd_notify(3)), spoken by both daemons.

A unit with `Type=notify` sets `NOTIFY_SOCKET` to an `AF_UNIX` datagram socket (a path, or an
abstract name written with a leading `@`); each datagram is newline-separated `KEY=value`
lines: `READY=1`, `STATUS=...`, `WATCHDOG=1`, `STOPPING=1`. With `WatchdogSec=`, systemd sets
`WATCHDOG_USEC` (and `WATCHDOG_PID`, the process it is meant for) and restarts the service when
no `WATCHDOG=1` arrives within that time.

`watchdog` pings from the event loop itself, every half period: a loop that blocks (a stuck
call, a busy handler) stops the pings and systemd restarts the process. Without
`NOTIFY_SOCKET` every call is a no-op, so a daemon run from a shell behaves the same.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

STATUS_EVERY_S = 5.0


class Notifier:
    """Sends notifications to the service manager; never raises (a lost datagram is logged)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # An abstract socket: `@name` in the variable, a leading NUL on the wire.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        self._failed = False
        self.sent = 0
        self.last_status = ""
        self.watchdog_s = _watchdog_period(env)
        """The watchdog period systemd expects pings within (None: no watchdog)."""

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, *fields: str) -> bool:
        """Send `KEY=value` lines in one datagram; False when not sent."""
        if not self._address:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as error:
            if not self._failed:
                log.warning("service manager notification failed", extra={
                    "socket": self._address.replace("\0", "@"), "error": str(error)})
                self._failed = True
            return False
        if self._failed:
            log.info("service manager notification recovered")
            self._failed = False
        self.sent += 1
        return True

    def ready(self, status: str) -> None:
        """Startup is finished: the service is doing its job."""
        self.last_status = _one_line(status)
        self.notify("READY=1", f"STATUS={self.last_status}")

    def status(self, status: str) -> None:
        """A one-line state for `systemctl status`; sent only when it changed."""
        line = _one_line(status)
        if line != self.last_status:
            self.last_status = line
            self.notify(f"STATUS={line}")

    def stopping(self, status: str = "stopping") -> None:
        self.last_status = _one_line(status)
        self.notify("STOPPING=1", f"STATUS={self.last_status}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _watchdog_period(env: Mapping[str, str]) -> float | None:
    """`WATCHDOG_USEC` in seconds, when it is meant for this process (`WATCHDOG_PID`)."""
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1e6


async def watchdog(notifier: Notifier, status: Callable[[], str] | None = None,
                   interval_s: float | None = None) -> None:
    """Ping `WATCHDOG=1` every half watchdog period from this loop, until cancelled; each
    turn also refreshes `STATUS=` from `status()`. A turn comes at least every `interval_s`
    (5 s by default), so the status stays fresh under a long watchdog period."""
    period = interval_s or STATUS_EVERY_S
    if notifier.watchdog_s:
        period = min(period, notifier.watchdog_s / 2)
    while True:
        if status is not None:
            notifier.status(status())
        if notifier.watchdog_s:
            notifier.notify("WATCHDOG=1")
        await asyncio.sleep(period)
