"""`Store.progress_points_of`, the batched read the order pages use (hub/orders.py), gives
each operation exactly what `progress_points` gives it (the alerts' read): the newest
`limit` points, oldest first, ties in event time broken alike; on SQLite and PostgreSQL."""

from __future__ import annotations

import json

from factories import operation_event

from hub.store import Incoming, Store
from sync import packet_codec


def _incoming(body: bytes) -> Incoming:
    raw = json.loads(body)
    return Incoming(packet_codec.from_obj(raw), raw)


def test_the_batched_read_matches_one_read_per_operation(hub_db_url: str) -> None:
    store = Store(hub_db_url)
    try:
        events = []
        seq = 0
        for order in ("WO-1", "WO-2", "WO-3"):
            for operation, count in (("OP10", 7), ("OP20", 2)):
                for i in range(count):
                    seq += 1
                    # Two points share each event time, one pair across the limit of 4:
                    # the tie-break must agree too.
                    events.append(operation_event(seq, work_order=order, operation=operation,
                                                  good=10 * i + seq % 3,
                                                  time=1_800_000_000.0 + i // 2))
        seq += 1
        events.append(operation_event(seq, work_order="WO-4", type="started"))
        store.store_batch([_incoming(e) for e in events])
        found = store.progress_points_of(["WO-1", "WO-2", "WO-4", "WO-1"], 4)
        expected = {(order, op): store.progress_points(order, op, 4)
                    for order in ("WO-1", "WO-2") for op in ("OP10", "OP20")}
        expected[("WO-4", "OP10")] = store.progress_points("WO-4", "OP10", 4)
        assert found == expected
        assert [len(p) for p in found.values()] == [4, 2, 4, 2, 1]
        assert ("WO-3", "OP10") not in found  # only the orders asked for
        assert store.progress_points_of([], 4) == {}
    finally:
        store.close()
