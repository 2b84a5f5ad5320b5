"""GET /v1/orders and /v1/orders/{order} as a supplier sees them: assigned orders before their
first event, due times, planned quantities, estimates, every delay-risk status, filters,
stable pages and the operations' timeline (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from factories import progress_draft, render_event
from fastapi.testclient import TestClient

from hub.api import ApiContext, create_app
from hub.config import hash_key, parse_config
from hub.risk import RISKS, Assessment, assess_operation, assess_order, estimate
from hub.store import Incoming, Store
from sync import packet as pk
from sync import packet_codec as codec
from sync.packet import format_time

T0 = 1_795_000_000.0  # 2026-11-18: the events' times, in the past of the test's clock
NOW = time.time()
DAY = 86_400.0


def _event(seq: int, work_order: str, kind: str, at: float, good: int, planned: int = 100,
           operation: str = "OP10") -> Incoming:
    state = {"started": "Running", "progress": "Running", "paused": "Paused",
             "resumed": "Running", "completed": "Completed"}[kind]
    draft = progress_draft(work_order=work_order, operation=operation, good=good, scrap=0,
                           planned=planned, state=state, time=at)
    draft = pk.Draft(f"keyop.operation.{kind}", draft.subject, at, draft.data)
    raw = json.loads(render_event(draft, seq=seq, id=f"01JDA5Q1Y4S7M2{seq:012d}",
                                  recorded=at + 0.05))
    return Incoming(codec.from_obj(raw), raw)


class Orders:
    def __init__(self, client: TestClient, key: str, other: str, store: Store) -> None:
        self.client = client
        self.store = store
        self.headers = {"Authorization": f"Bearer {key}"}
        self.other = {"Authorization": f"Bearer {other}"}

    def get(self, path: str, **params: Any) -> Any:
        answer = self.client.get(path, params=params, headers=self.headers)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def ids(self, **params: Any) -> list[str]:
        return [o["workOrder"] for o in self.get("/v1/orders", **params)["orders"]]


@pytest.fixture
def orders(tmp_path: Path, hub_db_url: str) -> Iterator[Orders]:
    acme, bolt = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    config = parse_config(f"""
hub: {{database: "{hub_db_url}"}}
api: {{port: 0, rate_per_s: 100000, burst: 100000}}
alerts: {{margin_s: 0}}
suppliers:
  acme: {{api_key_hash: "{hash_key(acme)}"}}
  bolt: {{api_key_hash: "{hash_key(bolt)}"}}
orders:
  WO-DONE: {{due: "{format_time(T0 + 1000)}"}}
  WO-LATE: {{due: "{format_time(T0 + 10)}"}}
  WO-MISSED: {{due: "{format_time(T0 + 50)}"}}
  WO-RISK: {{due: "{format_time(NOW + DAY)}", planned: 120}}
  WO-TRACK: {{due: "{format_time(NOW + DAY)}"}}
routes:
  - {{supplier: acme, work_orders: [WO-DONE, WO-LATE, WO-MISSED, WO-RISK, WO-TRACK, WO-NODUE]}}
  - {{supplier: bolt, work_orders: [WO-OTHER]}}
""", "orders-test.yaml")
    store = Store(hub_db_url)
    events = [
        # Done on time: started, paused, resumed, completed.
        _event(1, "WO-DONE", "started", T0, 0), _event(2, "WO-DONE", "paused", T0 + 20, 20),
        _event(3, "WO-DONE", "resumed", T0 + 30, 20),
        _event(4, "WO-DONE", "completed", T0 + 100, 100),
        # Completed after its due time.
        _event(5, "WO-MISSED", "started", T0, 0),
        _event(6, "WO-MISSED", "completed", T0 + 100, 100),
        # Still running, its due time passed.
        _event(7, "WO-LATE", "started", T0, 0), _event(8, "WO-LATE", "progress", T0 + 5, 5),
        # Running at one part a second: done long before a due time tomorrow.
        _event(9, "WO-TRACK", "started", T0, 0), _event(10, "WO-TRACK", "progress", T0 + 50, 50),
        # No progress at all: never at the current rate.
        _event(11, "WO-RISK", "started", T0, 0),
        _event(12, "WO-NODUE", "started", T0, 0),
        _event(13, "WO-OTHER", "started", T0, 0),
    ]
    store.store_batch(events, received_at=NOW - DAY)
    # Assigned through the API, with a due time, and not started.
    store.set_assignment("WO-NEW", ["acme"], NOW + 2 * DAY)
    with TestClient(create_app(ApiContext(config, store))) as client:
        yield Orders(client, acme, bolt, store)
    store.close()


def test_every_order_is_listed_with_its_risk(orders: Orders) -> None:
    page = orders.get("/v1/orders")
    found = {o["workOrder"]: o for o in page["orders"]}
    assert list(found) == sorted(found) and page["next"] is None
    assert {w: o["risk"] for w, o in found.items()} == {
        "WO-DONE": "on_track", "WO-LATE": "late", "WO-MISSED": "missed", "WO-NEW": "unknown",
        "WO-NODUE": "unknown", "WO-RISK": "at_risk", "WO-TRACK": "on_track"}
    assert set(RISKS) == {"on_track", "at_risk", "late", "missed", "unknown"}
    new = found["WO-NEW"]
    # Assigned and not started: listed with its due time, no operations yet.
    assert new["operations"] == [] and not new["closed"]
    assert new["due"] == format_time(NOW + 2 * DAY) and new["updatedAt"] is not None
    track = found["WO-TRACK"]
    # 50 of 100 in 50 s: the rest 50 s later.
    assert track["estimatedCompletion"] == format_time(T0 + 100)
    assert track["planned"] == 100 and track["operations"][0]["risk"] == "on_track"
    assert found["WO-RISK"]["planned"] == 120  # hub.yaml's planned quantity wins
    assert found["WO-RISK"]["estimatedCompletion"] is None
    assert found["WO-MISSED"]["closed"] and found["WO-MISSED"]["estimatedCompletion"] == \
        format_time(T0 + 100)
    assert "WO-OTHER" not in found


def test_an_assigned_unstarted_order_is_readable_by_its_supplier_only(orders: Orders) -> None:
    order = orders.get("/v1/orders/WO-NEW")
    assert (order["workOrder"], order["operations"], order["timeline"]) == ("WO-NEW", [], [])
    assert orders.get("/v1/orders/WO-NEW/operations") == {"operations": []}
    for path in ("/v1/orders/WO-NEW", "/v1/orders/WO-DONE"):
        answer = orders.client.get(path, headers=orders.other)
        assert answer.status_code == 404
        assert answer.json() == {"status": 404, "detail": "no such work order", "errors": []}
    assert [o["workOrder"] for o in orders.client.get(
        "/v1/orders", headers=orders.other).json()["orders"]] == ["WO-OTHER"]


def test_the_timeline_shows_when_each_operation_ran(orders: Orders) -> None:
    (timeline,) = orders.get("/v1/orders/WO-DONE")["timeline"]
    assert timeline["operation"] == "OP10"
    assert [(e["type"].rsplit(".", 1)[1], e["time"]) for e in timeline["events"]] == [
        ("started", format_time(T0)), ("paused", format_time(T0 + 20)),
        ("resumed", format_time(T0 + 30)), ("completed", format_time(T0 + 100))]
    assert timeline["running"] == [
        {"start": format_time(T0), "end": format_time(T0 + 20)},
        {"start": format_time(T0 + 30), "end": format_time(T0 + 100)}]
    (running,) = orders.get("/v1/orders/WO-LATE")["timeline"]
    assert running["running"] == [{"start": format_time(T0), "end": None}]


def test_filters(orders: Orders) -> None:
    assert orders.ids(status="closed") == ["WO-DONE", "WO-MISSED"]
    assert orders.ids(status="open") == ["WO-LATE", "WO-NEW", "WO-NODUE", "WO-RISK",
                                         "WO-TRACK"]
    assert orders.ids(risk=["at_risk", "late"]) == ["WO-LATE", "WO-RISK"]
    assert orders.ids(risk="missed") == ["WO-MISSED"]
    # Only the assignment changed in the last hour (the events were received a day ago).
    assert orders.ids(updated_since=format_time(NOW - 3600)) == ["WO-NEW"]
    assert len(orders.ids(updated_since=format_time(NOW - 2 * DAY))) == 7
    for bad in ({"status": "done"}, {"risk": "doomed"}, {"updated_since": "yesterday"},
                {"updated_since": "2026-11-18T00:00:00"}):
        answer = orders.client.get("/v1/orders", params=bad, headers=orders.headers)
        assert answer.status_code == 422, bad
        assert answer.json()["status"] == 422 and answer.json()["detail"]


def test_pages_are_stable_and_complete(orders: Orders) -> None:
    everything = orders.ids()
    seen: list[str] = []
    after: str | None = None
    for _ in range(10):
        page = orders.get("/v1/orders", limit=2, **({"after": after} if after else {}))
        seen += [o["workOrder"] for o in page["orders"]]
        after = page["next"]
        if after is None:
            break
        assert isinstance(after, str)
    assert seen == everything


def test_the_risk_rule() -> None:
    due = T0 + 100
    closed_late = assess_operation(closed=True, ended=due + 1, found=None, planned=10,
                                   due=due, now=NOW)
    assert closed_late == Assessment(due + 1, "missed")
    assert assess_operation(closed=True, ended=due, found=None, planned=10, due=due,
                            now=NOW).risk == "on_track"
    slow = estimate([(T0, 0), (T0 + 10, 1)], 100, 1, due, 0, False)
    assert slow.delay_risk
    assert assess_operation(closed=False, ended=None, found=slow, planned=100, due=due,
                            now=T0 + 20).risk == "at_risk"
    assert assess_operation(closed=False, ended=None, found=slow, planned=100, due=due,
                            now=due + 1).risk == "late"
    assert assess_operation(closed=False, ended=None, found=slow, planned=100, due=None,
                            now=T0).risk == "unknown"
    worst = assess_order([Assessment(1.0, "on_track"), Assessment(None, "at_risk")], due, T0)
    assert worst == Assessment(None, "at_risk")
    assert assess_order([], due, due + 1).risk == "late"
    assert assess_order([], due, T0).risk == "unknown"
