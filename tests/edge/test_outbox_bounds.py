"""Outbox bounds and damage: refuse, evict_low_priority with gap records, disk full
(`max_file_bytes` = PRAGMA max_page_count), a corrupt file at start."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from factories import outbox_entry, progress_draft

from edge_store import GAP_PRIORITY, Bounds, Entry, Outbox, OutboxFull
from gateway.outbox_gap import GAP_TYPE, make_gap_entry_factory
from sync import packet as pk
from sync import packet_codec as codec

SOURCE = "plant1/edge-07"
GAPS = make_gap_entry_factory(SOURCE, "plant1/body/line-3/edge-07", ZoneInfo("Europe/Berlin"))


def telemetry(good: int = 1) -> Entry:
    entry = outbox_entry(progress_draft(good=good))
    return Entry(entry.id, entry.render, 0, "keyop.operation.progress")


def key_event(good: int = 1) -> Entry:
    draft = pk.Draft("keyop.operation.completed", "WO-42/OP30", progress_draft().time,
                     {**progress_draft(good=good).data, "state": {"value": "Completed"}})
    entry = outbox_entry(draft)
    return Entry(entry.id, entry.render, 1, "keyop.operation.completed")


def gap_packets(outbox: Outbox) -> list[pk.Packet]:
    return [codec.decode(row.body) for row in outbox.export() if row.kind == GAP_TYPE]


def evicted_seqs(gaps: list[pk.Packet]) -> set[int]:
    seqs: set[int] = set()
    for gap in gaps:
        assert gap.data.gap is not None
        seqs |= set(range(int(gap.data.gap.fromSequence), int(gap.data.gap.toSequence) + 1))
    return seqs


def test_refuse_stores_nothing_raises_the_alarm_and_recovers_on_ack(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_store.outbox")
    with Outbox(tmp_path / "o.db", SOURCE, bounds=Bounds(max_packets=10)) as outbox:
        assert outbox.append([telemetry(i) for i in range(10)]) == list(range(1, 11))
        with pytest.raises(OutboxFull, match="policy refuse"):
            outbox.append([telemetry()])
        assert outbox.last_seq == 10 and outbox.stats().pending == 10
        assert outbox.stats().full and outbox.stats().refused_appends == 1
        # The hub acks 4: the delete and the waiting append share one transaction.
        result = outbox.commit([telemetry()], ack_upto=4)
        assert (result.deleted, [r.seq for r in result.rows]) == (4, [11])
        assert not outbox.stats().full
    messages = [r.getMessage() for r in caplog.records]
    assert sum("ALARM outbox full" in m for m in messages) == 1
    assert "outbox alarm cleared: appends fit again" in messages


def test_refuse_still_deletes_acknowledged_rows_when_the_append_does_not_fit(
    tmp_path: Path,
) -> None:
    with Outbox(tmp_path / "o.db", SOURCE, bounds=Bounds(max_packets=5)) as outbox:
        outbox.append([telemetry(i) for i in range(5)])
        with pytest.raises(OutboxFull):
            outbox.commit([telemetry(i) for i in range(4)], ack_upto=2)  # 3 + 4 > 5
        assert [row.seq for row in outbox.export()] == [3, 4, 5]


def test_evict_low_priority_takes_oldest_telemetry_first_and_names_every_gap(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge_store.outbox")
    bounds = Bounds(max_packets=100, policy="evict_low_priority")
    with Outbox(tmp_path / "o.db", SOURCE, bounds=bounds, gap_entry=GAPS) as outbox:
        # Every 10th packet is a key event (completed), the rest progress telemetry.
        entries = [key_event(i) if i % 10 == 0 else telemetry(i) for i in range(100)]
        outbox.append(entries)
        key_seqs = {i + 1 for i in range(100) if i % 10 == 0}
        outbox.append([telemetry(i) for i in range(30)])  # 30 over the bound
        stats = outbox.stats()
        remaining = {row.seq for row in outbox.export()}
        gaps = gap_packets(outbox)
        evicted = evicted_seqs(gaps)
        assert stats.pending <= 100
        assert key_seqs <= remaining, "key events outlive telemetry"
        assert evicted and not evicted & remaining
        assert min(evicted) == 2, "the oldest telemetry goes first"
        # Everything allocated is either still here or named by a gap record.
        assert remaining | evicted == set(range(1, outbox.last_seq + 1))
        assert stats.evicted_packets == len(evicted)
        assert sum(g.count for g in stats.gaps) == len(evicted)
        for gap in gaps:  # real v1 packets, ready for the hub
            assert gap.type == GAP_TYPE and gap.sourceepoch == outbox.epoch
        gap_rows = [row for row in outbox.export() if row.kind == GAP_TYPE]
        with outbox.engine.connect() as conn:
            prios = {p for (p,) in conn.exec_driver_sql(
                "SELECT priority FROM outbox WHERE kind = ?", (GAP_TYPE,))}
        assert prios == {GAP_PRIORITY} and len(gap_rows) == len(gaps)
    warnings = [r.getMessage() for r in caplog.records if "evicted" in r.getMessage()]
    assert warnings, "each eviction is a log line"


def test_evict_by_bytes_keeps_key_events_until_only_they_are_left(tmp_path: Path) -> None:
    size = len(telemetry().render(1, "E"))
    bounds = Bounds(max_bytes=size * 50, policy="evict_low_priority")
    with Outbox(tmp_path / "o.db", SOURCE, bounds=bounds, gap_entry=GAPS) as outbox:
        for _ in range(10):
            outbox.append([key_event()] + [telemetry(i) for i in range(9)])
        kinds = [row.kind for row in outbox.export()]
        assert kinds.count("keyop.operation.completed") == 10
        assert outbox.stats().pending_bytes <= size * 50 + 2_000  # + the gap rows themselves


def test_disk_full_under_evict_is_survived_with_gaps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge_store.outbox")
    outbox = Outbox(tmp_path / "o.db", SOURCE, bounds=Bounds(policy="evict_low_priority"),
                    gap_entry=GAPS, max_file_bytes=1024 * 1024)
    with outbox:
        for i in range(30):  # ~75 KB per round: the 1 MB cap is met after a dozen rounds
            outbox.append([telemetry(i) for _ in range(99)] + [key_event(i)])
        stats = outbox.stats()
        assert stats.disk_full > 0 and stats.evicted_packets > 0
        remaining = {row.seq for row in outbox.export()}
        evicted = evicted_seqs(gap_packets(outbox))
        assert remaining | evicted == set(range(1, outbox.last_seq + 1))
        assert {g.reason for g in stats.gaps} == {"disk full"}
        key_rows = [r for r in outbox.export() if r.kind == "keyop.operation.completed"]
        assert len(key_rows) == 30, "no key event was evicted while telemetry was left"


def test_disk_full_under_refuse_raises_and_loses_nothing_committed(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", SOURCE, max_file_bytes=128 * 1024) as outbox:
        committed = 0
        with pytest.raises(OutboxFull, match="disk full"):
            for _ in range(1000):
                committed += len(outbox.append([telemetry() for _ in range(50)]))
        assert outbox.stats().pending == committed == outbox.last_seq
        outbox.ack(committed)  # the hub catches up: room again
        assert outbox.append([telemetry()]) == [committed + 1]


def test_corrupt_file_is_moved_aside_and_a_new_epoch_begins(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, SOURCE) as outbox:
        old_epoch = outbox.epoch
        outbox.append([telemetry(i) for i in range(200)])
    path.write_bytes(b"this is not an SQLite file" + path.read_bytes()[26:])
    caplog.set_level(logging.ERROR, logger="edge_store.outbox")
    with Outbox(path, SOURCE) as outbox:
        assert outbox.epoch != old_epoch and outbox.last_seq == 0
        assert outbox.recovered_from is not None and outbox.recovered_from.exists()
        assert outbox.recovered_from.name.startswith("o.db.corrupt-")
        assert outbox.append([telemetry()]) == [1]
    assert any("outbox file is corrupt" in r.getMessage() for r in caplog.records)


def test_damaged_page_found_by_quick_check(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, SOURCE) as outbox:
        outbox.append([telemetry(i) for i in range(300)])
        old_epoch = outbox.epoch
    with sqlite3.connect(path) as conn:  # fold the WAL into the file before damaging it
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(path.read_bytes())
    for offset in range(page_size * 3, page_size * 3 + 200):  # a b-tree page in the middle
        data[offset] = 0xFF
    path.write_bytes(bytes(data))
    with Outbox(path, SOURCE) as outbox:
        assert outbox.recovered_from is not None
        assert outbox.epoch != old_epoch
