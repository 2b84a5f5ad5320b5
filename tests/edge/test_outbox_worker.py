"""The outbox worker's ack deletes: riding with appends, or alone after a delay, never lost."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from factories import outbox_entry

from edge_store import Outbox, worker_for
from edge_store import worker as worker_module

pytestmark = pytest.mark.timeout(30)

SOURCE = "plant1/edge-07"


class Deletions:
    """The worker's delete listener: what went, and a wait for a given sequence."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self._changed = asyncio.Event()

    def __call__(self, upto: int) -> None:
        self.seen.append(upto)
        self._changed.set()

    async def upto(self, seq: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not self.seen or self.seen[-1] < seq:
                self._changed.clear()
                await self._changed.wait()


def test_an_ack_alone_is_deleted_after_the_delay(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", SOURCE)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        worker = worker_for(outbox)
        deletions = Deletions()
        worker.add_delete_listener(deletions)
        await worker.append([outbox_entry(source=SOURCE, good=i) for i in range(5)])
        started = loop.time()
        for seq in (1, 2, 3):  # several acks within the delay: one delete
            worker.ack(seq)
        await deletions.upto(3)
        assert deletions.seen == [3]
        return loop.time() - started

    try:
        waited = asyncio.run(main())
        # No append came to carry it: the loop's timer woke the worker once the delay passed.
        assert waited >= worker_module.ACK_DELAY_S * 0.9
        assert outbox.pending_count == 2
        assert [row.seq for row in outbox.pending(0, 10)] == [4, 5]
    finally:
        outbox.close()


def test_an_ack_rides_with_the_next_append(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # A delay longer than the test: only the append can have carried the delete.
    monkeypatch.setattr(worker_module, "ACK_DELAY_S", 60.0)
    outbox = Outbox(tmp_path / "outbox.db", SOURCE)

    async def main() -> None:
        worker = worker_for(outbox)
        deletions = Deletions()
        worker.add_delete_listener(deletions)
        await worker.append([outbox_entry(source=SOURCE, good=i) for i in range(3)])
        before = worker.transactions
        worker.ack(2)
        await worker.append([outbox_entry(source=SOURCE, good=9)])
        assert worker.transactions == before + 1  # the delete and the append: one transaction
        await deletions.upto(2)

    try:
        asyncio.run(main())
        assert [row.seq for row in outbox.pending(0, 10)] == [3, 4]
    finally:
        outbox.close()


def test_a_large_ack_is_deleted_at_once(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "ACK_DELAY_S", 60.0)
    monkeypatch.setattr(worker_module, "ACK_ROWS_NOW", 10)
    outbox = Outbox(tmp_path / "outbox.db", SOURCE)

    async def main() -> None:
        worker = worker_for(outbox)
        deletions = Deletions()
        worker.add_delete_listener(deletions)
        await worker.append([outbox_entry(source=SOURCE, good=i) for i in range(12)])
        worker.ack(11)
        await deletions.upto(11)

    try:
        asyncio.run(main())
        assert [row.seq for row in outbox.pending(0, 20)] == [12]
    finally:
        outbox.close()


def test_a_read_does_not_turn_a_waiting_ack_into_a_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "ACK_DELAY_S", 60.0)
    outbox = Outbox(tmp_path / "outbox.db", SOURCE)

    async def main() -> None:
        worker = worker_for(outbox)
        deletions = Deletions()
        worker.add_delete_listener(deletions)
        await worker.append([outbox_entry(source=SOURCE, good=i) for i in range(3)])
        before = worker.transactions
        worker.ack(2)
        rows = await worker.read(0, 10)
        assert [row.seq for row in rows] == [1, 2, 3]
        assert worker.transactions == before and deletions.seen == []
        await worker.append([outbox_entry(source=SOURCE, good=9)])  # the ack rides here
        await deletions.upto(2)
        assert worker.transactions == before + 1

    try:
        asyncio.run(main())
    finally:
        outbox.close()
