"""The durable outbox and its group-commit writer, on real SQLite files."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
from pathlib import Path

import pytest
from factories import outbox_entry
from ulid import ULID

from edge_store import (
    Entry,
    GroupWriter,
    Outbox,
    OutboxClosed,
    OutboxError,
    RenderError,
    SourceMismatch,
)
from sync import packet as pk
from sync import packet_codec as codec

SOURCE = "plant1/edge-07"
ULID_RE = re.compile(pk.ULID_PATTERN)


def packet_entry(good: int = 209, source: str = SOURCE) -> Entry:
    return outbox_entry(source=source, good=good)


def _failing_entry() -> Entry:
    def render(seq: int, epoch: str) -> bytes:
        raise ValueError("cannot encode")

    return Entry(id=str(ULID()), render=render)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


def test_append_is_gap_free_and_epoch_is_a_ulid(db: Path) -> None:
    with Outbox(db, SOURCE) as outbox:
        assert ULID_RE.match(outbox.epoch)
        seqs = outbox.append([packet_entry(i) for i in range(5)])
        seqs += outbox.append([packet_entry(i) for i in range(5, 10)])
        assert seqs == list(range(1, 11))
        for seq, _id, _kind, body in outbox.pending(0, 100):
            packet = codec.decode(body)
            assert packet.seq == seq
            assert packet.sourceepoch == outbox.epoch
        assert outbox.append([]) == []
        with sqlite3.connect(db) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_outbox_files_are_private_whatever_the_umask(db: Path) -> None:
    previous = os.umask(0o002)
    try:
        with Outbox(db, SOURCE) as outbox:
            outbox.append([packet_entry(1)])
            for suffix in ("", "-wal", "-shm"):
                mode = db.with_name(db.name + suffix).stat().st_mode & 0o777
                assert mode == 0o600, f"{db.name}{suffix} mode {mode:o}"
    finally:
        os.umask(previous)


def test_synchronous_is_full_by_default_and_normal_on_request(db: Path) -> None:
    for mode, expected in (("FULL", 2), ("NORMAL", 1)):
        with Outbox(db, SOURCE, synchronous=mode) as outbox:  # type: ignore[arg-type]
            with outbox.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == expected
    with pytest.raises(OutboxError, match="synchronous"):
        Outbox(db, SOURCE, synchronous="OFF")  # type: ignore[arg-type]


def test_pending_in_order_with_after_and_limit(db: Path) -> None:
    with Outbox(db, SOURCE) as outbox:
        outbox.append([packet_entry(i) for i in range(20)])
        assert [s for s, *_ in outbox.pending(0, 5)] == [1, 2, 3, 4, 5]
        assert [s for s, *_ in outbox.pending(5, 3)] == [6, 7, 8]
        assert [s for s, *_ in outbox.pending(18, 100)] == [19, 20]
        assert outbox.pending(20, 100) == []


def test_ack_deletes_only_up_to_seq_and_is_idempotent(db: Path) -> None:
    with Outbox(db, SOURCE) as outbox:
        outbox.append([packet_entry(i) for i in range(10)])
        assert outbox.ack(4) == 4
        assert [s for s, *_ in outbox.pending(0, 100)] == [5, 6, 7, 8, 9, 10]
        assert outbox.ack(4) == 0
        assert outbox.ack(2) == 0
        stats = outbox.stats()
        assert (stats.pending, stats.first_pending_seq, stats.last_pending_seq) == (6, 5, 10)
        assert stats.pending_bytes == sum(len(r.body) for r in outbox.pending(0, 100))
        assert stats.last_seq == 10


def test_last_seq_survives_full_ack_and_reopen(db: Path) -> None:
    with Outbox(db, SOURCE) as outbox:
        epoch = outbox.epoch
        outbox.append([packet_entry(i) for i in range(7)])
        assert outbox.ack(7) == 7
        stats = outbox.stats()
        assert (stats.pending, stats.last_seq, stats.first_pending_seq) == (0, 7, None)
    with Outbox(db, SOURCE) as outbox:
        assert outbox.epoch == epoch
        assert outbox.last_seq == 7
        assert outbox.append([packet_entry()]) == [8]


def test_new_file_means_new_epoch_and_seq_restarts(db: Path) -> None:
    with Outbox(db, SOURCE) as outbox:
        old_epoch = outbox.epoch
        outbox.append([packet_entry(i) for i in range(3)])
    for path in db.parent.glob(db.name + "*"):  # the file and its -wal / -shm companions
        path.unlink()
    with Outbox(db, SOURCE) as outbox:
        assert outbox.epoch != old_epoch
        assert ULID_RE.match(outbox.epoch)
        assert outbox.append([packet_entry()]) == [1]


def test_other_source_is_refused_naming_both(db: Path) -> None:
    Outbox(db, SOURCE).close()
    with pytest.raises(SourceMismatch, match=r"plant1/edge-07.*plant1/edge-08"):
        Outbox(db, "plant1/edge-08")


def test_closed_outbox_refuses(db: Path) -> None:
    outbox = Outbox(db, SOURCE)
    outbox.close()
    outbox.close()
    with pytest.raises(OutboxClosed):
        outbox.append([packet_entry()])
    with pytest.raises(OutboxClosed):
        outbox.pending(0, 1)


def test_failed_render_or_commit_leaves_no_gap(db: Path) -> None:
    with Outbox(db, SOURCE) as outbox:
        assert outbox.append([packet_entry()]) == [1]
        with pytest.raises(RenderError) as caught:
            outbox.append([packet_entry(), _failing_entry()])
        assert caught.value.index == 1
        # A commit that fails inside SQLite (a trigger aborts the insert of one id) rolls back
        # the whole transaction, and the in-memory counter with it.
        bad = packet_entry()
        with outbox.engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON outbox "
                f"WHEN NEW.id = '{bad.id}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        with pytest.raises(OutboxError, match="refused"):
            outbox.append([packet_entry(), bad])
        assert outbox.last_seq == 1
        assert outbox.append([packet_entry()]) == [2]
        assert [s for s, *_ in outbox.pending(0, 10)] == [1, 2]
    with Outbox(db, SOURCE) as outbox:
        assert outbox.last_seq == 2


def test_writer_groups_concurrent_appends_and_returns_after_commit(db: Path) -> None:
    outbox = Outbox(db, SOURCE)
    commits = 0
    n = 500

    async def main() -> list[int]:
        async with GroupWriter(outbox, max_batch=1000) as writer:
            # A separate connection sees only committed rows: each awaited seq must be there.
            raw = sqlite3.connect(db)

            async def one(i: int) -> int:
                seq = await writer.append(packet_entry(i))
                row = raw.execute("SELECT seq FROM outbox WHERE seq = ?", (seq,)).fetchone()
                assert row == (seq,)
                return seq

            seqs = await asyncio.gather(*(one(i) for i in range(n)))
            raw.close()
            nonlocal commits
            commits = writer.transactions
            return list(seqs)

    try:
        seqs = asyncio.run(main())
        assert sorted(seqs) == list(range(1, n + 1))
        # 500 concurrent producers: a handful of group commits, not 500 transactions.
        assert 1 <= commits <= 10
    finally:
        outbox.close()


def test_writer_failing_render_fails_only_its_caller(db: Path) -> None:
    outbox = Outbox(db, SOURCE)

    async def main() -> list[int | BaseException]:
        async with GroupWriter(outbox) as writer:
            entries = [packet_entry(), _failing_entry(), packet_entry(), packet_entry()]
            return list(
                await asyncio.gather(*(writer.append(e) for e in entries), return_exceptions=True)
            )

    try:
        results = asyncio.run(main())
        assert isinstance(results[1], RenderError)
        assert sorted(r for r in results if isinstance(r, int)) == [1, 2, 3]
        assert [json.loads(r.body)["sequence"] for r in outbox.pending(0, 10)] == [
            pk.format_sequence(s) for s in (1, 2, 3)
        ]
    finally:
        outbox.close()


def test_writer_commit_error_reaches_every_waiter_and_close_refuses(db: Path) -> None:
    outbox = Outbox(db, SOURCE)

    async def main() -> None:
        writer = GroupWriter(outbox)
        assert await writer.append(packet_entry()) == 1
        outbox.close()  # every later commit fails inside the outbox
        results = await asyncio.gather(
            *(writer.append(packet_entry()) for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, OutboxClosed) for r in results)
        await writer.close()
        with pytest.raises(OutboxClosed):
            await writer.append(packet_entry())

    asyncio.run(main())


def test_writer_append_many_is_one_consecutive_unit(db: Path) -> None:
    outbox = Outbox(db, SOURCE)

    async def main() -> list[list[int] | BaseException]:
        async with GroupWriter(outbox, max_batch=4) as writer:
            units = [
                [packet_entry(i) for i in range(3)],
                [packet_entry(), _failing_entry()],  # fails as a whole
                [packet_entry(i) for i in range(6)],  # larger than max_batch: goes unsplit
                [packet_entry()],
            ]
            return list(
                await asyncio.gather(*(writer.append_many(u) for u in units),
                                     return_exceptions=True)
            )

    try:
        ok_a, failed, ok_b, ok_c = asyncio.run(main())
        assert isinstance(failed, RenderError)
        for seqs, n in ((ok_a, 3), (ok_b, 6), (ok_c, 1)):
            assert isinstance(seqs, list) and len(seqs) == n
            assert seqs == list(range(seqs[0], seqs[0] + n))
        assert [s for s, *_ in outbox.pending(0, 100)] == list(range(1, 11))
    finally:
        outbox.close()
