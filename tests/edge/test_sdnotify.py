"""The notify protocol against a real AF_UNIX datagram socket set as NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.sdnotify import Notifier, watchdog
from devstack.notify import NotifyListener


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[NotifyListener]:
    peer = NotifyListener(str(tmp_path / "notify"))
    yield peer
    peer.close()


def test_ready_status_and_stopping_arrive_as_datagrams(manager: NotifyListener) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": manager.address})
    assert notifier.enabled and notifier.watchdog_s is None
    notifier.ready("3 devices up,\n12 pending")
    notifier.status("3 devices up, 12 pending")  # unchanged (one line): not sent again
    notifier.status("2 devices up, 12 pending")
    notifier.stopping()
    manager.wait_for("STOPPING")
    messages = manager.messages()
    assert messages == ["READY=1\nSTATUS=3 devices up, 12 pending",
                        "STATUS=2 devices up, 12 pending",
                        "STOPPING=1\nSTATUS=stopping"]
    notifier.close()


def test_abstract_socket_name(tmp_path: Path) -> None:
    name = f"keyop-test-{os.getpid()}-{time.monotonic_ns()}"
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    peer.bind("\0" + name)
    peer.settimeout(5)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).notify("READY=1")
        assert peer.recv(100) == b"READY=1"
    finally:
        peer.close()


def test_without_a_socket_nothing_is_sent_and_a_dead_socket_does_not_raise(
        tmp_path: Path) -> None:
    assert not Notifier({}).notify("READY=1")
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert not gone.notify("READY=1")  # logged once, never raised
    assert gone.sent == 0


def test_watchdog_period_is_for_this_process_only() -> None:
    assert Notifier({"WATCHDOG_USEC": "2000000"}).watchdog_s == 2.0
    assert Notifier({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
                    ).watchdog_s == 2.0
    assert Notifier({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}).watchdog_s is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_s is None


def test_watchdog_pings_at_half_the_period_and_stops_while_the_loop_is_blocked(
        manager: NotifyListener) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "200000"})

    async def main() -> None:
        task = asyncio.create_task(watchdog(notifier, lambda: "fine"))
        await asyncio.sleep(0.6)
        time.sleep(1.0)  # noqa: ASYNC251 (the loop is blocked: no ping may leave)
        await asyncio.sleep(0.6)
        task.cancel()

    asyncio.run(main())
    pings = [at for at, _ in manager.lines("WATCHDOG")]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert len(pings) >= 8, pings
    assert max(gaps) >= 0.95, gaps  # the blocked second
    assert sorted(gaps)[-2] < 0.6, gaps  # otherwise every 0.1 s (a loaded machine lags)
    assert manager.messages().count("STATUS=fine") == 1
