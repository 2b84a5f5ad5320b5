"""The hub store on SQLite and PostgreSQL: stored once, duplicates counted, contiguous seqs,
gaps, independent sources and epochs, supplier cursors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hubkit import BASE_TIME, EPOCH, EPOCH2, SOURCE, incoming

from hub.schema import packets
from hub.store import Incoming, Store
from sync import packet as pk
from sync import packet_codec as codec


@pytest.fixture
def store(hub_db_url: str) -> Iterator[Store]:
    s = Store(hub_db_url)
    yield s
    s.close()


def test_batch_is_stored_once_and_repeats_are_duplicates(store: Store) -> None:
    batch = [incoming(1), incoming(2), incoming(3)]
    first = store.store_batch(batch)
    assert (first.new, first.duplicates, first.gaps) == (3, 0, [])
    progress = first.progress[(SOURCE, EPOCH)]
    assert (progress.previous, progress.contiguous, progress.advanced) == (0, 3, True)

    again = store.store_batch(batch)
    assert (again.new, again.duplicates) == (0, 3)
    assert again.progress[(SOURCE, EPOCH)].contiguous == 3
    assert not again.progress[(SOURCE, EPOCH)].advanced
    assert store.count_packets() == 3

    inside = store.store_batch([incoming(4), incoming(4)])
    assert (inside.new, inside.duplicates) == (1, 1)
    assert store.count_packets() == 4


def test_contiguous_waits_for_the_hole_and_gaps_are_reported(store: Store) -> None:
    r = store.store_batch([incoming(1), incoming(3), incoming(5)])
    assert r.progress[(SOURCE, EPOCH)].contiguous == 1
    assert [(g.first, g.last) for g in r.gaps] == [(2, 2)]

    r = store.store_batch([incoming(2)])
    assert r.progress[(SOURCE, EPOCH)].contiguous == 3
    assert [(g.first, g.last) for g in r.gaps] == [(4, 4)]

    r = store.store_batch([incoming(4)])
    assert r.progress[(SOURCE, EPOCH)].contiguous == 5
    assert r.gaps == []
    assert store.contiguous(SOURCE, EPOCH) == 5


def test_sources_and_epochs_are_independent(store: Store) -> None:
    other = "plant1/edge-08"
    r = store.store_batch([
        incoming(1), incoming(2),
        incoming(1, source=other), incoming(3, source=other),
        incoming(1, epoch=EPOCH2),
    ])
    assert r.new == 5
    assert r.progress[(SOURCE, EPOCH)].contiguous == 2
    assert r.progress[(other, EPOCH)].contiguous == 1
    assert r.progress[(SOURCE, EPOCH2)].contiguous == 1
    assert [(g.source, g.first) for g in r.gaps] == [(other, 2)]
    assert store.contiguous(SOURCE, EPOCH2) == 1
    assert store.contiguous("plant1/nobody", EPOCH) == 0


def test_cursors_and_packets_after(store: Store) -> None:
    assert store.get_cursors(["acme", "bolt"]) == {"acme": 0, "bolt": 0}
    store.store_batch([incoming(s) for s in range(1, 6)])
    rows = store.packets_after(0, 3)
    assert [r.seq for r in rows] == [1, 2, 3]
    assert json.loads(rows[0].body)["sequence"] == pk.format_sequence(1)
    assert rows[0].work_order == "WO-1001" and rows[0].operation == "OP30"
    assert [r.seq for r in store.packets_after(rows[-1].pk, 10)] == [4, 5]

    store.set_cursors({"acme": rows[1].pk})
    store.set_cursors({"acme": rows[2].pk, "bolt": rows[0].pk})
    assert store.get_cursors(["acme", "bolt", "new"]) == {
        "acme": rows[2].pk, "bolt": rows[0].pk, "new": 0}


def test_latest_state_follows_event_time_not_arrival(store: Store) -> None:
    # seq 2 happened last but arrives first.
    store.store_batch([incoming(2, time_offset=100)])
    store.store_batch([incoming(1, time_offset=50)])
    newest = store.latest_state_pk("WO-1001", "OP30")
    rows = store.packets_after(0, 10)
    assert newest == next(r.pk for r in rows if r.seq == 2)
    assert store.latest_state_pk("WO-9", "OP30") is None


def test_dead_letters_are_kept(store: Store) -> None:
    store.dead_letter_many([("keyop/v1/up/edge-07/events", "not JSON", b"{nope")])
    assert store.list_dead_letters() == [("keyop/v1/up/edge-07/events", "not JSON", b"{nope")]


def _gap_event(seq: int, first: int, last: int) -> Incoming:
    raw = json.loads(codec.render(
        pk.Draft("keyop.outbox.gap", "plant1/body/line-3/welder-2", BASE_TIME + seq, {
            "kopVersion": "1.0", "equipment": {"path": "plant1/body/line-3/welder-2"},
            "gap": {"fromSequence": pk.format_sequence(first),
                    "toSequence": pk.format_sequence(last), "reason": "evicted"},
            "tzOffset": "+00:00", "timeQuality": "synced"}),
        id=f"01JDA5Q1Y4S7M2GAP{seq:09d}", source=SOURCE, sequence=seq, epoch=EPOCH,
        recorded=BASE_TIME + seq))
    return Incoming(codec.from_obj(raw), raw)


def test_ranges_the_edge_declared_dropped_do_not_hold_the_ack_back(store: Store) -> None:
    r = store.store_batch([incoming(1), incoming(2), incoming(6)])
    assert r.progress[(SOURCE, EPOCH)].contiguous == 2
    # The edge evicted 3..4 and says so in packet 5; 6 was already stored.
    r = store.store_batch([_gap_event(5, 3, 4)])
    assert r.progress[(SOURCE, EPOCH)].contiguous == 6
    # A hole nobody declared still holds the ack back.
    r = store.store_batch([incoming(8)])
    assert r.progress[(SOURCE, EPOCH)].contiguous == 6


# -- the ingest plan (hub/ingest_sql.py): sizes around the old COPY threshold, duplicates,
# values stored exactly, the probe-and-save path and the walk, rollback ---------------------


def _stored(store: Store) -> list[tuple[Any, ...]]:
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(
            packets.c.source, packets.c.epoch, packets.c.seq, packets.c.id, packets.c.type,
            packets.c.subject, packets.c.work_order, packets.c.operation, packets.c.event_time,
            packets.c.good, packets.c.body).order_by(packets.c.pk))]


@pytest.mark.parametrize("size", [1, 31, 32, 33, 300])
def test_batches_of_any_size_are_stored_once_with_their_states(store: Store, size: int) -> None:
    batch = [incoming(s, work_order=f"WO-{s % 40}") for s in range(1, size + 1)]
    r = store.store_batch(batch, received_at=BASE_TIME + 0.125)
    assert (r.new, r.duplicates, r.gaps) == (size, 0, [])
    assert r.progress[(SOURCE, EPOCH)].contiguous == size
    assert store.contiguous(SOURCE, EPOCH) == size
    assert len(r.inserted) == size
    assert {pk for pk, _ in r.inserted} == {p.pk for p in store.packets_after(0, 10_000)}
    assert r.state_keys == {(f"WO-{s % 40}", "OP30") for s in range(1, size + 1)}
    states = store.states(r.state_keys)
    assert set(states) == r.state_keys
    for (work_order, _), row in states.items():
        newest = max(s for s in range(1, size + 1) if f"WO-{s % 40}" == work_order)
        assert (row.last_seq, row.good, row.received_at) == (newest, 10 * newest,
                                                           BASE_TIME + 0.125)
    again = store.store_batch(batch)
    assert (again.new, again.duplicates, again.state_keys) == (0, size, set())
    assert store.count_packets() == size


def test_values_are_stored_exactly(store: Store) -> None:
    odd = {"note": {"value": 'tab\there, quote " back\\slash, new\nline, ünï €', "uom": "C62",
                    "class": "public"}}
    batch = [incoming(1, work_order="WO-ß/1", params=odd, time_offset=0.1 + 0.2),
             _gap_event(2, 7, 9)]
    expected = [(item.packet.source, item.packet.sourceepoch, item.packet.seq, item.packet.id,
                 item.packet.type, item.packet.subject) for item in batch]
    store.store_batch(batch)
    rows = _stored(store)
    assert [r[:6] for r in rows] == expected
    assert rows[0][6:10] == ("WO-ß/1", "OP30", pk.parse_time(batch[0].packet.time), 10)
    assert rows[1][6:8] == (None, None) and rows[1][9] is None  # not an operation event
    assert [json.loads(r[10]) for r in rows] == [item.raw for item in batch]
    assert [p.body for p in store.packets_after(0, 10)] == [r[10] for r in rows]


def test_duplicates_inside_and_across_batches_in_one_batch(store: Store) -> None:
    store.store_batch([incoming(s) for s in (1, 2, 3)])
    r = store.store_batch([incoming(s) for s in (2, 3, 4, 4, 5, 3)])
    assert (r.new, r.duplicates, r.gaps) == (2, 4, [])
    progress = r.progress[(SOURCE, EPOCH)]
    assert (progress.previous, progress.contiguous) == (3, 5)
    assert [p.seq for p in store.packets_after(0, 10)] == [1, 2, 3, 4, 5]
    # Only repeats: nothing moves, and the acknowledgement value is still reported.
    r = store.store_batch([incoming(5), incoming(1)])
    assert (r.new, r.duplicates, r.progress[(SOURCE, EPOCH)].contiguous) == (0, 2, 5)


def test_rows_stored_past_the_run_are_walked(store: Store) -> None:
    other = "plant1/edge-08"
    store.store_batch([incoming(4), incoming(6), incoming(1, source=other)])
    # SOURCE: 1..3 run on from 0, but 4 is stored past them: the walk takes it to 4, then
    # stops at the hole at 5. `other` runs on with nothing past it.
    r = store.store_batch([incoming(2), incoming(1), incoming(3), incoming(2, source=other)])
    assert r.progress[(SOURCE, EPOCH)].contiguous == 4
    assert r.progress[(other, EPOCH)].contiguous == 2
    assert [(g.source, g.first, g.last) for g in r.gaps] == [(SOURCE, 5, 5)]
    assert (store.contiguous(SOURCE, EPOCH), store.contiguous(other, EPOCH)) == (4, 2)
    # A repeat after another worker filled the hole picks it up (nothing new in the batch).
    store.store_batch([incoming(5, epoch=EPOCH2)])  # another key, unrelated
    r = store.store_batch([incoming(5)])
    assert r.progress[(SOURCE, EPOCH)].contiguous == 6
    r = store.store_batch([incoming(6)])
    assert (r.new, r.progress[(SOURCE, EPOCH)].contiguous) == (0, 6)


def test_many_sources_in_one_batch(store: Store) -> None:
    sources = [f"plant1/edge-{n:02d}" for n in range(40)]
    batch = [incoming(s, source=src) for src in reversed(sources) for s in (2, 1)]
    r = store.store_batch(batch)
    assert r.new == 80 and r.gaps == []
    assert all(r.progress[(src, EPOCH)].contiguous == 2 for src in sources)
    assert all(store.contiguous(src, EPOCH) == 2 for src in sources)


def test_a_failed_batch_leaves_nothing_behind(store: Store) -> None:
    store.store_batch([incoming(1)])
    store.packets_after(0, 10)  # fan-out reads share the pool (autocommit on PostgreSQL)
    store.states([("WO-1001", "OP30")])
    store.get_cursors(["acme"])
    good = incoming(2)
    # A packet without a subject (NOT NULL): the insert fails after the progress row was
    # locked, and the driver's error arrives as SQLAlchemy's (the hub retries on those).
    bad = Incoming(good.packet.model_copy(
        update={"subject": None, "sequence": pk.format_sequence(3)}), good.raw)
    with pytest.raises(sa.exc.IntegrityError):
        store.store_batch([good, bad])
    assert store.count_packets() == 1
    assert store.contiguous(SOURCE, EPOCH) == 1
    r = store.store_batch([incoming(2), incoming(3)])
    assert r.progress[(SOURCE, EPOCH)].contiguous == 3
    assert store.count_packets() == 3
