"""A virtual RS-485 line on this box: two ptys joined by an in-process relay (no socat).

`NullModem` opens two pseudo-terminals and copies bytes between their master ends on the
event loop; each side's slave path (`a`, `b`) is a serial device that pyserial (and so
pymodbus) opens like a real port. `cut` drops everything in both directions while set (the
"cable pulled" fault) and `bytes_relayed` counts what crossed.
"""

from __future__ import annotations

import asyncio
import os
import tty


class NullModem:
    """Two pty slave paths wired to each other; `start()` / `close()` on a running loop."""

    def __init__(self) -> None:
        self._masters: list[int] = []
        self._slaves: list[int] = []
        self.paths: list[str] = []
        #: While True, nothing crosses the line (fault injection).
        self.cut = False
        self.bytes_relayed = 0

    @property
    def a(self) -> str:
        return self.paths[0]

    @property
    def b(self) -> str:
        return self.paths[1]

    def start(self) -> NullModem:
        loop = asyncio.get_running_loop()
        for _ in range(2):
            master, slave = os.openpty()
            tty.setraw(slave)  # no echo, no line discipline: bytes pass unchanged
            os.set_blocking(master, False)
            self._masters.append(master)
            self._slaves.append(slave)  # kept open so the master never sees a hang-up
            self.paths.append(os.ttyname(slave))
        for i, master in enumerate(self._masters):
            loop.add_reader(master, self._relay, master, self._masters[1 - i])
        return self

    def _relay(self, source: int, target: int) -> None:
        try:
            data = os.read(source, 4096)
        except (BlockingIOError, OSError):
            return
        if data and not self.cut:
            self.bytes_relayed += len(data)
            try:
                os.write(target, data)
            except OSError:
                pass  # the far side is closed; a real line loses the bytes too

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for master in self._masters:
            loop.remove_reader(master)
        for fd in (*self._masters, *self._slaves):
            try:
                os.close(fd)
            except OSError:
                pass
        self._masters, self._slaves = [], []
