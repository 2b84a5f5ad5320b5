"""Poison never stops the hub: refused events are settled, store refusals are isolated, the
next good packet is stored and acknowledged, a restart does not meet the poison again;
gateways report only for what hub.yaml binds them to; a wrong clock never wins state."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from hubkit import (
    EPOCH,
    GATEWAY,
    SOURCE,
    Client,
    RunningHub,
    acked,
    batch,
    hub_config,
    incoming,
    make_event,
    wait_until,
)

from devstack.mosquitto import PrivateBroker
from hub.config import parse_config
from hub.db_errors import transient
from hub.log_throttle import RepeatedWarnings
from hub.store import Store
from sync import topics

POISON_ORDER = "WO-POISON"


def event(seq: int, **changes: object) -> bytes:
    """`make_event(seq)` with top-level or `data.*` fields replaced ("data.x.y" paths)."""
    obj = json.loads(make_event(seq))
    for path, value in changes.items():
        where = obj
        *parents, last = path.split("__")
        for part in parents:
            where = where[part]
        where[last] = value
    return json.dumps(obj).encode()


def poison_trigger(url: str) -> None:
    """A database trigger that refuses any packet row of POISON_ORDER: a real refusal by the
    database, of an event the hub's validation accepts."""
    Store(url).close()  # the schema first
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(sa.text(
                "CREATE TRIGGER poison BEFORE INSERT ON packets "
                f"WHEN NEW.work_order = '{POISON_ORDER}' "
                "BEGIN SELECT RAISE(ABORT, 'poison row refused by trigger'); END"))
        else:
            conn.execute(sa.text(
                "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN "
                f"IF NEW.work_order = '{POISON_ORDER}' THEN "
                "RAISE EXCEPTION 'poison row refused by trigger' "
                "USING ERRCODE = 'check_violation'; "
                "END IF; RETURN NEW; END $$ LANGUAGE plpgsql"))
            conn.execute(sa.text("CREATE TRIGGER poison BEFORE INSERT ON packets "
                                 "FOR EACH ROW EXECUTE FUNCTION poison()"))
    engine.dispose()


def poisoned(seq: int) -> bytes:
    obj = json.loads(make_event(seq, work_order=POISON_ORDER))
    return json.dumps(obj).encode()


@pytest.fixture
def edge(broker: PrivateBroker) -> Iterator[Client]:
    client = Client(broker, topics.down_ack(GATEWAY))
    yield client
    client.close()


# -- the store: refused identities are settled ------------------------------------------


def test_refused_seqs_are_settled_even_as_the_last_one(hub_db_url: str) -> None:

    store = Store(hub_db_url)
    try:
        r = store.store_batch([incoming(1), incoming(2)], refused=[(SOURCE, EPOCH, 3)])
        assert (r.new, r.refused, r.progress[(SOURCE, EPOCH)].contiguous) == (2, 1, 3)
        # A hole, then a refusal that fills it: the walk steps over both kinds.
        r = store.store_batch([incoming(6)])
        assert r.progress[(SOURCE, EPOCH)].contiguous == 3 and r.gaps
        r = store.store_batch([incoming(5)], refused=[(SOURCE, EPOCH, 4)])
        assert r.progress[(SOURCE, EPOCH)].contiguous == 6
        # A refused event sent again changes nothing but is counted (so it is acknowledged).
        r = store.store_batch([], refused=[(SOURCE, EPOCH, 4)])
        assert (r.refused, r.progress[(SOURCE, EPOCH)].contiguous) == (1, 6)
        assert store.contiguous(SOURCE, EPOCH) == 6
    finally:
        store.close()


def test_an_id_reused_under_another_sequence_is_refused_not_swallowed(hub_db_url: str) -> None:

    store = Store(hub_db_url)
    try:
        first, second = incoming(1), incoming(2)
        raw = {**second.raw, "id": first.packet.id}
        clash = type(second)(type(second.packet).model_validate(raw), raw)
        r = store.store_batch([first, clash, incoming(3)])
        assert (r.new, r.duplicates, r.refused, r.id_clashes) == (2, 0, 1, 1)
        assert r.progress[(SOURCE, EPOCH)].contiguous == 3
        (letter,) = store.dead_letter_rows()
        assert f"id: '{first.packet.id}' is already the id of another packet" in letter.reason
        # Sent again, it is still no duplicate of anything stored: refused again, settled.
        r = store.store_batch([clash])
        assert (r.duplicates, r.refused, r.progress[(SOURCE, EPOCH)].contiguous) == (0, 1, 3)
    finally:
        store.close()


def test_the_hub_database_file_is_private(tmp_path: Path) -> None:

    previous = os.umask(0o002)
    try:
        store = Store(f"sqlite:///{tmp_path / 'var' / 'hub.db'}")
        store.store_batch([incoming(1)])
        for suffix in ("", "-wal", "-shm"):
            mode = (tmp_path / "var" / f"hub.db{suffix}").stat().st_mode & 0o777
            assert mode == 0o600, f"hub.db{suffix} mode {mode:o}"
        store.close()
    finally:
        os.umask(previous)


def test_dead_letters_are_bounded(hub_db_url: str) -> None:
    store = Store(hub_db_url)
    try:
        payload = b"x" * 60_000
        store.dead_letter_many([("keyop/v1/up/edge-07/events", "why\x00\ud800" + "r" * 5000,
                                 payload, 900)])
        (row,) = store.dead_letter_rows()
        assert (row.size, row.items, len(row.payload)) == (60_000, 900, 4096)
        assert len(row.reason) == 2000 and "\x00" not in row.reason
    finally:
        store.close()


# -- error classes --------------------------------------------------------------------------


def test_only_an_unreachable_or_busy_database_istransient() -> None:
    def sqlite_error(text: str) -> sa.exc.OperationalError:
        return sa.exc.OperationalError("INSERT", {}, sqlite3.OperationalError(text))

    def pg_error(sqlstate: str, kind: type[sa.exc.DBAPIError]) -> sa.exc.DBAPIError:
        return kind("INSERT", {}, psycopg.errors.lookup(sqlstate)("refused"))

    assert transient(sqlite_error("database is locked"))
    assert transient(sqlite_error("disk I/O error"))
    assert not transient(sqlite_error("string or blob too big"))
    assert transient(pg_error("08006", sa.exc.OperationalError))  # connection failure
    assert transient(pg_error("40P01", sa.exc.OperationalError))  # deadlock
    assert not transient(pg_error("22003", sa.exc.DataError))  # numeric out of range
    assert not transient(pg_error("23514", sa.exc.IntegrityError))  # check violation
    assert not transient(OverflowError("Python int too large to convert to SQLite INTEGER"))
    assert not transient(ValueError("odd"))


def test_repeated_warnings_are_counted_not_repeated(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    warnings = RepeatedWarnings(logging.getLogger("t"), window_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t"):
        for _ in range(1000):
            warnings.warning("k", "bad packet from %s", "edge-07")
        warnings.warning("other", "another kind")
        assert [r.getMessage() for r in caplog.records] == ["bad packet from edge-07",
                                                            "another kind"]
        now[0] = 61.0
        warnings.flush()
    assert caplog.records[-1].getMessage() == (
        "bad packet from edge-07 (999 more like this in the last 60s, the last shown)")
    assert caplog.records[-1].repeats == 999  # type: ignore[attr-defined]


# -- the running hub ------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_out_of_range_values_and_store_refusals_never_stop_ingest(
    broker: PrivateBroker, hub_db_url: str, edge: Client
) -> None:
    """An honest gateway's uint64 counter reading 2^64-1, a quantity the database cannot hold,
    and a row the database itself refuses, in one batch with good events and beside another
    gateway: each bad one is one dead letter, every good one is stored and acknowledged."""
    poison_trigger(hub_db_url)
    hub = RunningHub(hub_config(broker, hub_db_url), broker)
    other = Client(broker, topics.down_ack("edge-08"))
    try:
        up = topics.up_events(GATEWAY)
        edge.publish(up, batch(
            make_event(1), make_event(2),
            event(3, data__quantities__good=2**64 - 1, data__quantities__produced=2**64 - 1),
            poisoned(4), make_event(5)))
        edge.publish(up, event(6, data__quantities__planned=2**63))
        edge.publish(up, make_event(7))
        other_source = "plant1/edge-08"
        other.publish(topics.up_events("edge-08"), batch(
            *(make_event(s, source=other_source) for s in (1, 2, 3))))
        wait_until(lambda: acked(edge)[-1:] == [7], "ack of seq 7 past three refusals")
        wait_until(lambda: any(p.get("sequence") == "00000000000000000003"
                               for p in other.payloads()), "the other gateway acked")
        service = hub.service
        assert (service.stored, service.refused_seqs, service.store_refusals) == (7, 3, 1)
        assert service.store is not None
        letters = service.store.dead_letter_rows()
        assert len(letters) == 3
        reasons = " | ".join(row.reason for row in letters)
        assert "event 2: " in reasons and "data.quantities.good" in reasons
        assert "poison row refused by trigger" in reasons
        assert "data.quantities.planned" in reasons
        assert service.store.count_packets() == 7
    finally:
        other.close()
        hub.close()


@pytest.mark.timeout(60)
def test_thousands_of_bad_items_in_one_message_are_one_dead_letter(
    broker: PrivateBroker, hub_db_url: str, edge: Client
) -> None:
    hub = RunningHub(hub_config(broker, hub_db_url), broker)
    try:
        up = topics.up_events(GATEWAY)
        # 5,000 items that are no events, and a real one among them: one letter, one packet.
        items = [str(i).encode() for i in range(5000)]
        items.insert(2500, make_event(1))
        edge.publish(up, batch(*items))
        wait_until(lambda: acked(edge)[-1:] == [1], "ack of the one real event")
        assert (hub.service.stored, hub.service.dead_letters) == (1, 1)
        assert hub.service.store is not None
        (letter,) = hub.service.store.dead_letter_rows()
        assert letter.items == 5000
        assert letter.reason.startswith("event 0: packet: expected a JSON object")
        assert letter.reason.endswith("; and 4995 more bad events")
        assert letter.size == len(batch(*items)) and len(letter.payload) == 4096
    finally:
        hub.close()


@pytest.mark.timeout(90)
def test_a_restart_dead_letters_the_queued_poison_and_goes_on(
    broker: PrivateBroker, hub_db_url: str, edge: Client
) -> None:
    """The hub is away while poison waits for it in its broker session; on start it takes it,
    dead-letters it, acknowledges it to the broker, and stores what follows."""
    poison_trigger(hub_db_url)
    config = hub_config(broker, hub_db_url)
    RunningHub(config, broker).close()  # leaves its persistent session and subscription
    up = topics.up_events(GATEWAY)
    edge.publish(up, make_event(1))
    edge.publish(up, poisoned(2))
    edge.publish(up, event(3, time="2026-13-45T25:61:61.000Z"))
    edge.publish(up, make_event(4))
    hub = RunningHub(config, broker)
    try:
        wait_until(lambda: acked(edge)[-1:] == [4], "ack of seq 4 after the restart")
        assert hub.service.dead_letters == 2
    finally:
        hub.close()
    # Started once more, nothing is left to meet again.
    hub = RunningHub(config, broker)
    try:
        edge.publish(up, make_event(5))
        wait_until(lambda: acked(edge)[-1:] == [5], "ack of seq 5")
        assert hub.service.dead_letters == 0
        assert hub.service.store is not None
        assert len(hub.service.store.dead_letter_rows()) == 2
    finally:
        hub.close()


def bound_config(broker: PrivateBroker, db_url: str) -> str:
    return f"""
hub: {{id: hub, database: "{db_url}"}}
api: {{enabled: false}}
alerts: {{enabled: false}}
mqtt: {{host: {broker.host}, port: {broker.port}, client_id: keyop-hub-bound, share_group: hubtest}}
gateways:
  edge-07: {{site: plant1, areas: [body], work_orders: ["WO-1*"]}}
  edge-08: {{site: plant1}}
suppliers:
  acme: {{}}
routes:
  - {{supplier: acme, types: ["*"]}}
"""


@pytest.mark.timeout(90)
def test_a_gateway_reports_only_for_what_hub_yaml_binds_it_to(
    broker: PrivateBroker, hub_db_url: str, edge: Client
) -> None:
    hub = RunningHub(parse_config(bound_config(broker, hub_db_url)), broker)
    try:
        up = topics.up_events(GATEWAY)
        edge.publish(up, make_event(1))
        # Another site (its source): refused, and not settled (the source is not ours).
        foreign = json.loads(make_event(1, source="plant2/edge-07"))
        edge.publish(up, json.dumps(foreign).encode())
        # Our site, an area and a work order it is not declared for: refused, settled.
        edge.publish(up, event(2, data__equipment__path="plant1/paint/line-1/booth-2"))
        edge.publish(up, make_event(3, work_order="WO-2001"))
        # A gateway hub.yaml does not declare.
        stranger = Client(broker, topics.down_ack("edge-66"))
        stranger.publish(topics.up_events("edge-66"), make_event(1, source="plant1/edge-66"))
        edge.publish(up, make_event(4))
        wait_until(lambda: acked(edge)[-1:] == [4], "ack of seq 4 past the refusals")
        wait_until(lambda: hub.service.dead_letters == 4, "4 dead letters")
        assert hub.service.stored == 2
        assert hub.service.store is not None
        reasons = [row.reason for row in hub.service.store.dead_letter_rows()]
        assert any("reports for site 'plant1' (hub.yaml gateways.edge-07.site), not 'plant2'"
                   in r for r in reasons)
        assert any("not in an allowed area (hub.yaml gateways.edge-07.areas)" in r
                   for r in reasons)
        assert any("'WO-2001' matches no allowed pattern" in r for r in reasons)
        assert any("gateway 'edge-66' is not declared in hub.yaml gateways" in r
                   for r in reasons)
        assert hub.service.store.contiguous("plant2/edge-07", EPOCH) == 0
        assert stranger.payloads() == []
        stranger.close()
    finally:
        hub.close()


@pytest.mark.timeout(60)
def test_an_event_time_from_a_wrong_clock_never_wins_operation_state(
    broker: PrivateBroker, hub_db_url: str, edge: Client
) -> None:
    hub = RunningHub(hub_config(broker, hub_db_url), broker)
    try:
        now = time.time()
        ahead = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now + 86_400))
        edge.publish(topics.up_events(GATEWAY), event(1, time=ahead, data__quantities__good=999,
                                                     data__quantities__produced=999))
        wait_until(lambda: acked(edge)[-1:] == [1], "the future event stored")
        assert hub.service.future_events == 1
        # Another gateway's event a few seconds later, in its true time: it is the newer one.
        later = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() + 5))
        other = Client(broker, topics.down_ack("edge-08"))
        obj = json.loads(make_event(1, source="plant1/edge-08"))
        obj["time"] = later
        other.publish(topics.up_events("edge-08"), json.dumps(obj).encode())
        wait_until(lambda: hub.service.stored == 2, "the second event stored")
        other.close()
        assert hub.service.store is not None
        (state,) = hub.service.store.list_states(None, 10)
        assert (state.good, state.last_source) == (10, "plant1/edge-08")
        # The future event keeps its own time in what is stored and sent.
        stored = hub.service.store.packets_after(0, 10)
        assert json.loads(stored[0].body)["time"] == ahead
    finally:
        hub.close()
