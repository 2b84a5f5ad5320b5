"""The supplier feed (hub/feed.py): gap-free per-supplier positions under concurrent writers,
assignments as events with backfill, nothing ever deleted (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hubkit import incoming
from sqlalchemy.exc import SQLAlchemyError

from hub.config import HubConfig, parse_config
from hub.db_errors import transient
from hub.feed import Feed, FeedEntry
from hub.store import Incoming, Store
from sync import packet as pk
from sync import packet_codec as codec

SOURCES = ["plant1/edge-01", "plant1/edge-02", "plant1/edge-03"]
RESTRICTED = {"weldCurrent": {"value": 212.5, "class": "restricted"},
              "cycleTime": {"value": 41.0, "class": "public"}}


def feed_config(db_url: str) -> HubConfig:
    return parse_config(f"""
hub: {{id: hub, database: "{db_url}"}}
suppliers:
  acme: {{}}
  bolt: {{}}
routes:
  - {{supplier: acme, work_orders: ["WO-1*"]}}
  - {{supplier: bolt, work_orders: [WO-2001]}}
""", "feed-test.yaml")


@pytest.fixture
def store(hub_db_url: str) -> Iterator[Store]:
    made = Store(hub_db_url, feed_config(hub_db_url))
    yield made
    made.close()


def item(seq: int, work_order: str, source: str = SOURCES[0], **kw: Any) -> Incoming:
    return incoming(seq, source=source, work_order=work_order, **kw)


def bodies(entries: list[FeedEntry]) -> list[dict[str, Any]]:
    return [json.loads(e.body) for e in entries]


def test_each_supplier_gets_its_own_positions_and_redacted_copies(store: Store) -> None:
    feed = Feed(store)
    assert feed.head("acme") == 0 and feed.read("acme", 0, 10) == []
    store.store_batch([item(1, "WO-1001", params=RESTRICTED), item(2, "WO-2001"),
                       item(3, "WO-1002"), item(4, "WO-9999")])
    acme, bolt = feed.read("acme", 0, 10), feed.read("bolt", 0, 10)
    assert [e.position for e in acme] == [1, 2] and [e.position for e in bolt] == [1]
    assert [int(b["sequence"]) for b in bodies(acme)] == [1, 3]
    assert feed.heads(["acme", "bolt", "cargo"]) == {"acme": 2, "bolt": 1, "cargo": 0}
    # Redacted once, when stored: the restricted param never reaches the feed.
    assert set(bodies(acme)[0]["data"]["params"]) == {"cycleTime"}
    first = acme[0]
    assert first.event_id == bodies(acme)[0]["id"] and first.type == "keyop.operation.progress"
    assert first.supplier == "acme" and first.stored_at > 0
    # Paging: after a position, never anything before it; a duplicate appends nothing.
    assert feed.read("acme", 1, 10) == acme[1:]
    store.store_batch([item(1, "WO-1001", params=RESTRICTED)])
    assert feed.head("acme") == 2


def test_a_waiting_reader_is_woken_by_an_append_in_this_process(store: Store) -> None:
    feed = Feed(store)

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        waiting = asyncio.ensure_future(feed.wait(30.0))
        await asyncio.sleep(0)  # the waiter is registered
        started = loop.time()
        await asyncio.to_thread(store.store_batch, [item(1, "WO-1001")])
        await waiting
        return loop.time() - started

    assert asyncio.run(scenario()) < 5.0
    assert feed.head("acme") == 1


@pytest.mark.timeout(120)
def test_positions_are_gap_free_under_concurrent_writers(hub_db_url: str) -> None:
    """Three writers ingest at once (each with its own engine, as hub processes do), a fourth
    moves an assignment back and forth, a reader follows acme's feed meanwhile: no position
    is missing, none is seen before the ones below it, and the assignment loses nothing."""
    config = feed_config(hub_db_url)
    stores = [Store(hub_db_url, config) for _ in range(5)]
    batches, size = 15, 6
    errors: list[BaseException] = []
    done = threading.Event()
    followed: list[FeedEntry] = []

    def retried(write: Any) -> None:
        """A write retried while the database says "busy, try again", as the hub's ingest
        loop does (hub/db_errors.py): separate SQLite writers queue on a lock that is not
        fair, so under load one may wait past busy_timeout."""
        for _ in range(20):
            try:
                write()
                return
            except SQLAlchemyError as error:
                if not transient(error):
                    raise
                time.sleep(0.05)
        write()

    def ingest(index: int) -> None:
        store = stores[index]
        for b in range(batches):
            first = b * size + 1
            # Each batch: acme's orders, and bolt's WO-2001 and WO-3001 (assigned by turns).
            batch = [item(seq, ("WO-1001", "WO-2001", "WO-3001")[seq % 3],
                          source=SOURCES[index]) for seq in range(first, first + size)]
            retried(lambda batch=batch: store.store_batch(batch))

    def reassign() -> None:
        store = stores[3]
        flip = 0
        while not done.is_set():
            suppliers = ["bolt"] if flip % 2 == 0 else []
            retried(lambda suppliers=suppliers: store.set_assignment("WO-3001", suppliers, None))
            flip += 1
            done.wait(0.002)  # the writers get a turn (assignments change rarely in a plant)
        retried(lambda: store.set_assignment("WO-3001", ["bolt"], None))

    def follow() -> None:
        feed = Feed(stores[4])
        cursor = 0
        while True:
            last_round = done.is_set()
            page = feed.read("acme", cursor, 7)
            for entry in page:
                assert entry.position == cursor + 1, (entry.position, cursor)
                cursor = entry.position
            followed.extend(page)
            if last_round and not page:
                return

    def guarded(fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except BaseException as error:  # reported by the test thread
            errors.append(error)
            done.set()

    writers = [threading.Thread(target=guarded, args=(ingest, i)) for i in range(3)]
    others = [threading.Thread(target=guarded, args=(reassign,)),
              threading.Thread(target=guarded, args=(follow,))]
    try:
        for thread in writers + others:
            thread.start()
        for thread in writers:
            thread.join(90)
        done.set()
        for thread in others:
            thread.join(60)
        assert not errors, errors
        feed = Feed(stores[0])
        total = 3 * batches * size
        acme = feed.read("acme", 0, 10_000)
        assert [e.position for e in acme] == list(range(1, total // 3 + 1))
        assert followed == acme
        bolt = feed.read("bolt", 0, 100_000)
        assert [e.position for e in bolt] == list(range(1, len(bolt) + 1))
        # Assigned at the end: every WO-3001 event is in bolt's feed (routed or backfilled),
        # whatever the interleaving with ingest; WO-2001's exactly once (a hub.yaml route).
        by_order: dict[str, list[str]] = {}
        for entry in bolt:
            if entry.packet_pk is not None:
                by_order.setdefault(entry.work_order or "", []).append(entry.event_id)
        stored = {json.loads(p.body)["id"]: p.work_order
                  for p in stores[0].packets_after(0, 10_000)}
        assert set(by_order["WO-3001"]) == {i for i, w in stored.items() if w == "WO-3001"}
        assert sorted(by_order["WO-2001"]) == sorted(
            i for i, w in stored.items() if w == "WO-2001")
        assert feed.head("bolt") == len(bolt)
    finally:
        for store in stores:
            store.close()


def test_assignments_are_events_with_backfill_and_nothing_is_deleted(store: Store) -> None:
    feed = Feed(store)
    store.store_batch([item(seq, "WO-3001") for seq in (1, 2)])
    assert feed.head("bolt") == 0  # not routed to anyone
    due = 1_795_000_000.0
    store.set_assignment("WO-3001", ["bolt"], due)
    added, *history = bodies(feed.read("bolt", 0, 10))
    assert added["type"] == "keyop.assignment.added"
    assert added["source"] == "hub/hub" and added["sequence"] == pk.format_sequence(1)
    assert added["subject"] == "WO-3001" and "equipment" not in added["data"]
    # At the plant's offset: the events' tzOffset (tests/factories.py writes +08:00).
    assert added["data"]["assignment"]["due"] == "2026-11-18T19:06:40.000+08:00"
    assert added["time"].endswith("+08:00")
    codec.from_obj(added)
    assert [int(e["sequence"]) for e in history] == [1, 2]
    assert all(e["keyopbackfill"] is True for e in history)
    # The order's next event follows, not marked.
    store.store_batch([item(3, "WO-3001")])
    third = json.loads(feed.read("bolt", 3, 10)[0].body)
    assert int(third["sequence"]) == 3 and "keyopbackfill" not in third

    # Removed: an event says so; what was delivered stays; nothing new comes.
    store.set_assignment("WO-3001", [], None)
    store.store_batch([item(4, "WO-3001")])
    entries = feed.read("bolt", 0, 20)
    assert [e.type for e in entries] == [
        "keyop.assignment.added", *["keyop.operation.progress"] * 3, "keyop.assignment.removed"]
    removed = json.loads(entries[-1].body)
    assert removed["sequence"] == pk.format_sequence(2)  # the hub's second event for bolt
    assert removed["data"]["assignment"]["due"] == "2026-11-18T19:06:40.000+08:00"

    # Assigned again: only what bolt never got is backfilled (seq 4), no repeat of 1-3.
    store.set_assignment("WO-3001", ["bolt", "acme"], None)
    again = bodies(feed.read("bolt", 5, 20))
    assert [(e["type"], e.get("sequence")) for e in again] == [
        ("keyop.assignment.added", pk.format_sequence(3)),
        ("keyop.operation.progress", pk.format_sequence(4))]
    assert again[1]["keyopbackfill"] is True and again[0]["data"]["assignment"]["due"] is None
    # acme is new to the order: its whole history.
    assert [int(e["sequence"]) for e in bodies(feed.read("acme", 1, 20))] == [1, 2, 3, 4]
    # Only the due time changes: `added` again, no backfill; bolt's feed kept every entry.
    store.set_assignment("WO-3001", ["bolt", "acme"], due)
    tail = feed.read("bolt", 7, 20)
    assert [e.type for e in tail] == ["keyop.assignment.added"]
    assert [e.position for e in feed.read("bolt", 0, 100)] == list(range(1, 9))


def test_positions_survive_a_new_store_on_the_same_database(hub_db_url: str) -> None:
    config = feed_config(hub_db_url)
    first = Store(hub_db_url, config)
    first.store_batch([item(seq, "WO-1001") for seq in (1, 2, 3)])
    first.close()
    again = Store(hub_db_url, config)
    try:
        again.store_batch([item(seq, "WO-1001") for seq in (3, 4)])
        entries = Feed(again).read("acme", 0, 10)
        assert [e.position for e in entries] == [1, 2, 3, 4]
        assert [int(json.loads(e.body)["sequence"]) for e in entries] == [1, 2, 3, 4]
    finally:
        again.close()


def test_a_store_without_config_appends_nothing(hub_db_url: str) -> None:
    plain = Store(hub_db_url)
    try:
        plain.store_batch([item(1, "WO-1001")])
        assert Feed(plain).head("acme") == 0
        started = time.monotonic()
        asyncio.run(Feed(plain).wait(0.05))  # nothing to wake it: its timeout
        assert time.monotonic() - started >= 0.04
    finally:
        plain.close()


@pytest.mark.timeout(60)
def test_an_assignment_waits_for_an_ingest_in_flight(hub_db_url: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The race the assignment's lock closes: ingest has read the (old) assignments of its
    batch and not yet committed when the order is assigned. The assignment must wait, so its
    backfill sees the event; otherwise neither would put it in the supplier's feed."""
    from hub import feed_route

    config = feed_config(hub_db_url)
    ingesting, assigning = Store(hub_db_url, config), Store(hub_db_url, config)
    paused, release = threading.Event(), threading.Event()
    original = feed_route.assigned_suppliers

    def slow(conn: Any, orders: Any) -> dict[str, set[str]]:
        found = original(conn, orders)
        paused.set()
        assert release.wait(30)
        return found

    monkeypatch.setattr(feed_route, "assigned_suppliers", slow)
    ingest = threading.Thread(target=ingesting.store_batch, args=([item(1, "WO-3001")],))
    assign = threading.Thread(target=assigning.set_assignment, args=("WO-3001", ["bolt"], None))
    try:
        ingest.start()
        assert paused.wait(30)
        assign.start()
        assign.join(1.0)
        assert assign.is_alive(), "the assignment did not wait for the ingest in flight"
        release.set()
        ingest.join(30)
        assign.join(30)
        types = [e.type for e in Feed(ingesting).read("bolt", 0, 10)]
        assert types == ["keyop.assignment.added", "keyop.operation.progress"]
    finally:
        release.set()
        ingest.join(30)
        assign.join(30)
        ingesting.close()
        assigning.close()


def test_a_gateway_cannot_send_the_hubs_own_events(hub_db_url: str) -> None:
    from hub.admission import Admission

    admission = Admission(feed_config(hub_db_url))
    for type_ in ("keyop.alert.delay_risk", "keyop.assignment.added"):
        raw = json.loads(json.dumps(item(1, "WO-1001").raw))
        raw["type"] = type_
        raw["data"].update(alarm={"code": "x", "severity": "warning", "active": True},
                           assignment={"due": None})
        packet = codec.from_obj(raw)
        assert admission.check("edge-01", packet, time.time()) == (
            f"type: {type_!r} is made by the hub only (docs/feed.md)")
    assert not isinstance(admission.check("edge-01", item(1, "WO-1001").packet, time.time()),
                          str)
