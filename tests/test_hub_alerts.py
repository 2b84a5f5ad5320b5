"""Delay alerts: completion estimated from the progress rate, raised and cleared (or missed)
once per change, only to the suppliers concerned, as events of their feeds (every channel)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from factories import progress_draft, render_event
from fastapi.testclient import TestClient

from hub.alerts import Alerts, estimate
from hub.api import ApiContext, create_app
from hub.config import HubConfig, hash_key, parse_config
from hub.feed import Feed
from hub.schema import op_state
from hub.store import Incoming, Store
from sync import packet as pk

T0 = 1_795_000_000.0
MINUTE = 60.0
KEY = "acme-alerts-key-0123456789"


def config(db_url: str) -> HubConfig:
    return parse_config(f"""
hub: {{id: hub, database: "{db_url}"}}
alerts: {{margin_s: 60, stall_after_s: 300, window: 10}}
orders:
  WO-1001: {{due: "{pk.format_time(T0 + 15 * MINUTE)}"}}
suppliers:
  acme: {{api_key_hash: "{hash_key(KEY)}"}}
  bolt: {{}}
routes:
  - {{supplier: acme, work_orders: [WO-1001]}}
  - {{supplier: bolt, work_orders: [WO-1002]}}
""", "alerts.yaml")


def packet(seq: int, good: int, *, work_order: str = "WO-1001", state: str = "Running",
           kind: str = "progress") -> Incoming:
    draft = progress_draft(work_order=work_order, good=good, scrap=0, planned=500, state=state,
                           time=T0 + seq * MINUTE)
    own = work_order == "WO-1001"  # other orders come from another gateway
    raw = json.loads(render_event(draft, seq=seq, id=f"01JDA5Q1Y4S7M{2 if own else 3}{seq:012d}",
                                  source="plant1/edge-07" if own else "plant1/edge-08"))
    raw["type"] = f"keyop.operation.{kind}"
    return Incoming(pk.from_obj(raw), raw)


@pytest.fixture
def setup(hub_db_url: str) -> Iterator[tuple[Store, Alerts, ApiContext]]:
    cfg = config(hub_db_url)
    store = Store(hub_db_url, cfg)
    context = ApiContext(cfg, store)
    yield store, Alerts(cfg, store, context), context
    store.close()


def test_estimate_from_the_rate() -> None:
    points = [(T0 + i * MINUTE, 10 * i) for i in range(6)]  # 10 parts a minute
    found = estimate(points, 500, 50, due=T0 + 60 * MINUTE, margin_s=0, stalled=False)
    assert found.rate_per_s == pytest.approx(10 / MINUTE)
    assert found.completion == pytest.approx(T0 + 50 * MINUTE)
    assert not found.delay_risk
    late = estimate(points, 500, 50, due=T0 + 40 * MINUTE, margin_s=0, stalled=False)
    assert late.delay_risk
    flat = estimate([(T0, 5), (T0 + MINUTE, 5)], 500, 5, due=T0 + 10**6, margin_s=0,
                    stalled=False)
    assert flat.completion is None and flat.delay_risk
    assert not estimate(points, None, 50, due=T0, margin_s=0, stalled=False).delay_risk
    assert not estimate(points, 500, 50, due=None, margin_s=0, stalled=False).delay_risk


def test_alerts_raised_and_cleared_once_per_change(
        setup: tuple[Store, Alerts, ApiContext]) -> None:
    store, alerts, context = setup
    # 10 parts a minute, 450 to go after minute 5: done near minute 50, due at minute 15.
    store.store_batch([packet(seq, 10 * seq) for seq in range(1, 6)], received_at=T0 + 300)
    store.store_batch([packet(seq, seq, work_order="WO-1002") for seq in (1, 2)],
                      received_at=T0 + 300)
    assert alerts.evaluate(now=T0 + 310) == 1
    assert alerts.evaluate(now=T0 + 320) == 0  # no change, no alert
    # Silence past stall_after_s: stalled is raised (bolt's WO-1002 has no due time, but it
    # stalls too, and only bolt hears of it).
    assert alerts.evaluate(now=T0 + 700) == 2
    assert alerts.evaluate(now=T0 + 710) == 0
    # Progress resumes: stalled clears; then completion clears the delay risk too.
    store.store_batch([packet(6, 60)], received_at=T0 + 720)
    assert alerts.evaluate(now=T0 + 730) == 1
    store.store_batch([packet(7, 500, state="Completed", kind="completed")],
                      received_at=T0 + 740)
    assert alerts.evaluate(now=T0 + 750) == 1
    assert alerts.evaluate(now=T0 + 760) == 0

    # Each alert is in its supplier's feed, after the events it is about.
    feed = Feed(store)
    acme = [json.loads(e.body) for e in feed.read_types("acme", 0, 100, "keyop.alert.")]
    bolt = [json.loads(e.body) for e in feed.read_types("bolt", 0, 100, "keyop.alert.")]
    assert [e.type for e in feed.read("bolt", 0, 100)] == [
        "keyop.operation.progress", "keyop.operation.progress", "keyop.alert.stalled"]
    assert [(a["type"], a["data"]["alarm"]["active"], a["data"]["alarm"]["status"])
            for a in acme] == [
        ("keyop.alert.delay_risk", True, "raised"), ("keyop.alert.stalled", True, "raised"),
        ("keyop.alert.stalled", False, "cleared"), ("keyop.alert.delay_risk", False, "cleared")]
    assert [(a["type"], a["data"]["workOrder"]["id"]) for a in bolt] == [
        ("keyop.alert.stalled", "WO-1002")]
    for alert in acme + bolt:
        parsed = pk.from_obj(alert)  # a valid v1 packet, made by the hub
        assert parsed.source == "hub/hub"
        # Times at the plant's offset (its events' tzOffset), not UTC.
        assert alert["data"]["tzOffset"] == "+08:00"
        assert alert["time"].endswith("+08:00") and alert["recordedtime"].endswith("+08:00")
    due = datetime.fromisoformat(acme[0]["data"]["estimate"]["due"])
    assert due.timestamp() == T0 + 15 * MINUTE and due.utcoffset() == timedelta(hours=8)
    assert acme[0]["data"]["estimate"]["ratePerHour"] == pytest.approx(600, rel=0.01)
    # The hub's events are numbered per supplier: no gaps, nothing of the other's volume.
    assert [int(a["sequence"]) for a in acme] == [1, 2, 3, 4]
    assert [int(a["sequence"]) for a in bolt] == [1]

    with TestClient(create_app(context)) as client:
        assert client.get("/v1/alerts").status_code == 401
        page = client.get("/v1/alerts", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert [a["id"] for a in page["alerts"]] == [a["id"] for a in acme]
        # The same alerts are in /v1/events, at the same positions.
        events = client.get("/v1/events", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert [e for e in events["events"] if e["type"].startswith("keyop.alert.")] == acme
        assert page["next"] == max(e.position for e in feed.read("acme", 0, 100)
                                   if e.type.startswith("keyop.alert."))
        assert client.get("/v1/alerts", params={"after": page["next"]},
                          headers={"Authorization": f"Bearer {KEY}"}).json()["alerts"] == []


def test_a_late_completion_closes_a_delay_risk_as_missed(
        setup: tuple[Store, Alerts, ApiContext]) -> None:
    store, alerts, _context = setup
    store.store_batch([packet(seq, 10 * seq) for seq in range(1, 6)], received_at=T0 + 300)
    assert alerts.evaluate(now=T0 + 310) == 1  # at risk: due at minute 15
    # Completed at minute 20, after the due time: missed, not cleared.
    store.store_batch([packet(20, 500, state="Completed", kind="completed")],
                      received_at=T0 + 20 * MINUTE)
    assert alerts.evaluate(now=T0 + 20 * MINUTE + 10) == 1
    raised, closed = (json.loads(e.body)
                      for e in Feed(store).read_types("acme", 0, 10, "keyop.alert."))
    assert raised["data"]["alarm"]["status"] == "raised"
    assert closed["type"] == "keyop.alert.delay_risk"
    assert closed["data"]["alarm"]["active"] is False
    assert closed["data"]["alarm"]["status"] == "missed"
    assert "after its due time" in closed["data"]["alarm"]["text"]
    pk.from_obj(closed)


def test_an_assignment_due_time_and_supplier_count(setup: tuple[Store, Alerts, ApiContext],
                                                   tmp_path: Path) -> None:
    store, alerts, context = setup
    store.store_batch([packet(seq, seq, work_order="WO-1002") for seq in (1, 2, 3)],
                      received_at=T0 + 180)
    assert alerts.evaluate(now=T0 + 190) == 0  # no due time yet
    store.set_assignment("WO-1002", ["acme", "bolt"], T0 + 5 * MINUTE)
    context.reload()
    assert alerts.evaluate(now=T0 + 200) == 2  # both suppliers, once each
    status: dict[Any, bool] = store.alert_status()
    assert {k[3] for k, active in status.items() if active} == {"acme", "bolt"}


def test_an_estimate_that_overflows_counts_as_never_finishing() -> None:
    big = 2**63 - 1
    points = [(T0 + i * MINUTE, 10 * i) for i in range(6)]
    found = estimate(points, big, 50, due=T0 + 60 * MINUTE, margin_s=0, stalled=False)
    assert found.rate_per_s == pytest.approx(10 / MINUTE)
    assert found.completion is None and found.delay_risk  # ~1.7e16 years away
    # A rate of about 1e-10 parts a second: the completion would be beyond year 9999.
    slow = estimate([(0.0, 0), (9e9, 1)], 10**9, 1, due=T0, margin_s=0, stalled=False)
    assert 0 < slow.rate_per_s < 1e-9 and slow.completion is None and slow.delay_risk
    # Points whose time is not a printable time are left out (NaN, infinite, year 10000+).
    odd = [(float("nan"), 0), (T0, 10), (float("inf"), 20), (T0 + MINUTE, 20), (1e300, 5)]
    found = estimate(odd, 500, 20, due=T0 + 10**6, margin_s=0, stalled=False)
    assert found.rate_per_s == pytest.approx(10 / MINUTE) and found.completion is not None


def test_one_bad_operation_does_not_stop_the_evaluation(
        setup: tuple[Store, Alerts, ApiContext], caplog: pytest.LogCaptureFixture) -> None:
    store, alerts, context = setup
    store.store_batch([packet(seq, 10 * seq) for seq in range(1, 6)], received_at=T0 + 300)
    with store.engine.begin() as conn:
        # Another operation of the same order, which reading for a supplier fails on. (Odd
        # stored values are read as unknown, so the failure is injected at that seam.)
        row = dict(store.states([("WO-1001", "OP30")])[("WO-1001", "OP30")]._mapping)
        conn.execute(op_state.insert().values({**row, "operation": "OP40"}))
    visible = context.visible_state

    def failing_for_op40(supplier: str, state: Any) -> bool:
        if state.operation == "OP40":
            raise json.JSONDecodeError("Expecting value", "not json", 0)
        return visible(supplier, state)

    context.visible_state = failing_for_op40  # type: ignore[method-assign]
    assert alerts.evaluate(now=T0 + 310) == 1  # OP30's delay risk, OP40 skipped
    assert alerts.skipped == 2  # once per supplier
    assert alerts.evaluate(now=T0 + 320) == 0 and alerts.skipped == 4
    skipped = [r.getMessage() for r in caplog.records
               if r.getMessage().startswith("delay alerts: work order WO-1001 operation OP40")]
    assert len(skipped) == 2, skipped  # not again at the second evaluation
    assert "skipped for supplier acme: JSONDecodeError" in skipped[0]
    # OP30's alert went to both feeds all the same.
    assert [e.type for e in Feed(store).read_types("acme", 0, 10, "keyop.alert.")] == [
        "keyop.alert.delay_risk"]


def test_a_due_time_beyond_year_9999_is_ignored_with_a_warning(
        setup: tuple[Store, Alerts, ApiContext], caplog: pytest.LogCaptureFixture) -> None:
    store, alerts, context = setup
    store.store_batch([packet(seq, seq, work_order="WO-1002") for seq in (1, 2, 3)],
                      received_at=T0 + 180)
    store.set_assignment("WO-1002", ["bolt"], 1e300)
    context.reload()
    assert alerts.evaluate(now=T0 + 190) == 0  # no delay risk against it, nothing raised
    assert alerts.evaluate(now=T0 + 900) == 1  # stalls are still evaluated
    assert alerts.skipped == 0
    due = [r for r in caplog.records if "due time 1e+300" in r.getMessage()]
    assert len(due) == 1 and due[0].levelname == "WARNING"
