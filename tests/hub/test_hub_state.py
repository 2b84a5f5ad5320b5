"""Operation state does not depend on arrival order: any order, any batching, any number of
hub workers give the same `op_state` rows; a packet is never stored twice."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hubkit import (
    EPOCH,
    EPOCH2,
    GATEWAY,
    Client,
    RunningHub,
    acked,
    batch,
    events_by_id,
    hub_config,
    incoming,
    make_event,
    wait_until,
)

from devstack.mosquitto import PrivateBroker
from hub.schema import op_state, packets, source_progress
from hub.state import state_document
from hub.store import Incoming, Store
from sync import topics

OTHER = "plant1/edge-08"


@pytest.fixture
def store(hub_db_url: str) -> Iterator[Store]:
    s = Store(hub_db_url)
    yield s
    s.close()


def history(work_order: str) -> list[Incoming]:
    """Two sources report one operation: started, progress, completed, with a new epoch on
    one of them, and event times that disagree with sequence order across sources."""
    items = [incoming(seq, work_order=work_order, time_offset=seq * 10.0) for seq in (1, 2, 3)]
    items[0].raw["type"] = "keyop.operation.started"
    items += [incoming(seq, work_order=work_order, epoch=EPOCH2, time_offset=100.0 + seq)
              for seq in (1, 2)]
    items += [incoming(seq, work_order=work_order, source=OTHER, time_offset=40.0 + seq)
              for seq in (1, 2)]
    last = incoming(3, work_order=work_order, source=OTHER, state="Completed",
                    time_offset=200.0)
    last.raw["type"] = "keyop.operation.completed"
    items.append(last)
    return [Incoming(type(i.packet).model_validate(i.raw), i.raw) for i in items]


def view(store: Store, work_order: str) -> dict[str, Any]:
    (row,) = store.list_states(None, 10, work_order=work_order)
    document = state_document(row)
    document.pop("workOrder")
    return {**document, "last": (row.last_source, row.last_epoch, row.last_seq)}


def test_state_is_the_same_for_every_arrival_order_and_batching(store: Store) -> None:
    rng = random.Random(20261121)
    store.store_batch(history("WO-REF"))
    expected = view(store, "WO-REF")
    assert expected["state"] == "Completed" and expected["quantities"]["good"] == 30
    assert expected["last"] == (OTHER, EPOCH, 3)
    assert expected["startedAt"] is not None and expected["completedAt"] is not None
    for trial in range(12):
        work_order = "WO-REF"
        with store.engine.begin() as conn:
            for table in (packets, op_state, source_progress):
                conn.execute(table.delete())
        items = history(work_order)
        rng.shuffle(items)
        # Random batches, with random repeats of packets already sent.
        while items:
            size = rng.randint(1, 4)
            chunk, items = items[:size], items[size:]
            store.store_batch(chunk + rng.sample(chunk, rng.randint(0, len(chunk))))
        assert view(store, work_order) == expected, trial


def test_a_late_older_event_does_not_roll_state_back(store: Store) -> None:
    store.store_batch([incoming(5, work_order="WO-L", time_offset=50)])
    store.store_batch([incoming(4, work_order="WO-L", time_offset=60)])  # older seq, later time
    assert view(store, "WO-L")["last"] == ("plant1/edge-07", EPOCH, 5)
    assert view(store, "WO-L")["quantities"]["good"] == 50


@pytest.mark.timeout(90)
def test_two_hub_workers_share_the_ingest(broker: PrivateBroker, hub_db_url: str,
                                          tmp_path: Any) -> None:
    """Two HubService instances on one shared subscription and one database: every packet
    stored once, the same state as one worker, acks complete, suppliers served once."""
    edge = Client(broker, topics.down_ack(GATEWAY))
    acme = Client(broker, topics.sup_all("acme"))
    first = RunningHub(hub_config(broker, hub_db_url, "keyop-hub-a"), broker)
    second = RunningHub(hub_config(broker, hub_db_url, "keyop-hub-b"), broker)
    up = topics.up_events(GATEWAY)
    events = [make_event(seq, work_order="WO-1001" if seq % 3 else "WO-1003",
                         operation="OP30" if seq % 2 else "OP40") for seq in range(1, 121)]
    try:
        # Batches and singles, out of order, with resends, published from two threads.
        rng = random.Random(7)
        chunks: list[list[bytes]] = []
        rest = list(events)
        while rest:
            size = rng.randint(1, 8)
            chunks.append(rest[:size])
            rest = rest[size:]
        rng.shuffle(chunks)
        resend = rng.sample(events, 30)

        def publish(part: list[list[bytes]]) -> None:
            for chunk in part:
                edge.publish(up, batch(*chunk))

        threads = [threading.Thread(target=publish, args=(chunks[k::2],)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for payload in resend:
            edge.publish(up, payload)
        try:
            wait_until(lambda: max(acked(edge), default=0) == 120, "ack of seq 120", 30)
        except BaseException:
            st = first.service.store
            assert st is not None
            print("DEBUG", st.count_packets(), st.contiguous("plant1/edge-07", EPOCH),
                  [(s.messages, s.stored, s.duplicates) for s in (first.service, second.service)],
                  sorted(acked(edge)))
            raise
        services = [first.service, second.service]
        # `messages` counts a batch when taken, `stored`/`duplicates` after its commit: wait
        # for the commits.
        wait_until(lambda: sum(s.stored + s.duplicates for s in services) >= 150,
                   "every event committed", 30)
        assert all(s.messages > 0 for s in services), "the shared subscription split nothing"
        store = first.service.store
        assert store is not None
        assert store.count_packets() == 120
        assert sum(s.stored for s in services) == 120
        assert sum(s.duplicates for s in services) == 30

        # The same state as one worker given the packets in order.
        reference = Store(f"sqlite:///{tmp_path / 'reference.db'}")
        for payload in events:
            obj = json.loads(payload)
            reference.store_batch([Incoming(type(incoming(1).packet).model_validate(obj), obj)])
        assert [state_document(r) for r in store.list_states(None, 100)] == [
            state_document(r) for r in reference.list_states(None, 100)]
        reference.close()
        states = {(r.work_order, r.operation): r for r in store.list_states(None, 100)}
        assert states[("WO-1001", "OP30")].last_seq == 119
        assert states[("WO-1003", "OP40")].last_seq == 120

        # Only the lease holder fans out: acme (WO-1001 and WO-1003*) gets each event once.
        wait_until(lambda: len(events_by_id(acme)) == 120, "acme's events", 30)
        assert set(events_by_id(acme).values()) == {1}
    finally:
        second.close()
        first.close()
        edge.close()
        acme.close()


@pytest.mark.timeout(60)
def test_sse_stream_and_api_served_by_the_hub(broker: PrivateBroker, hub_db_url: str,
                                              tmp_path: Any) -> None:
    key = "k" * 20 + "-acme-stream-key"
    (tmp_path / "acme.key").write_text(key)
    config = hub_config(broker, hub_db_url)
    suppliers = dict(config.suppliers)
    suppliers["acme"] = suppliers["acme"].model_copy(
        update={"api_key_file": str(tmp_path / "acme.key")})
    config = config.model_copy(update={"suppliers": suppliers})
    hub = RunningHub(config, broker)
    edge = Client(broker)
    try:
        api = hub.service.api
        assert api is not None and api.port
        base = f"http://127.0.0.1:{api.port}"
        headers = {"Authorization": f"Bearer {key}"}
        assert httpx.get(f"{base}/v1/stream", timeout=5).status_code == 401
        lines: list[str] = []
        with httpx.stream("GET", f"{base}/v1/stream", headers=headers, timeout=10) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            stream = response.iter_lines()
            assert next(stream).startswith(": keyop")
            edge.publish(topics.up_events(GATEWAY), batch(make_event(1, work_order="WO-1002"),
                                                          make_event(2)))
            for line in stream:
                lines.append(line)
                if line.startswith("data:"):
                    break
        event = json.loads(lines[-1].removeprefix("data:"))
        # WO-1002 is bolt's: the first event acme sees is seq 2.
        assert event["data"]["workOrder"]["id"] == "WO-1001" and int(event["sequence"]) == 2
        assert any(line.startswith("id: ") for line in lines)
        orders = httpx.get(f"{base}/v1/orders", headers=headers, timeout=5).json()
        assert [o["workOrder"] for o in orders["orders"]] == ["WO-1001"]
    finally:
        edge.close()
        hub.close()
