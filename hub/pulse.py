"""A wake-up for waiters on one event loop, fired from any thread: "something was appended"."""

from __future__ import annotations

import asyncio


class Pulse:
    """Wakes every waiter when `notify` is called (thread-safe `notify`).

    Inside one process only: what other hub processes append is found by polling (their
    waiters give `wait` a timeout).
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    async def wait(self, timeout: float) -> None:
        """Return on the next `notify`, or after `timeout` seconds."""
        if self._event is None or self._loop is not asyncio.get_running_loop():
            self._loop = asyncio.get_running_loop()
            self._event = asyncio.Event()
        event = self._event
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return

    def notify(self) -> None:
        loop, event = self._loop, self._event
        if loop is None or event is None:
            return
        self._event = asyncio.Event() if loop is _running_loop() else None

        def fire() -> None:
            event.set()

        if loop is _running_loop():
            fire()
        else:
            try:
                loop.call_soon_threadsafe(fire)
            except RuntimeError:
                pass  # that loop has closed


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
