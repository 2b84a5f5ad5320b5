"""The supplier REST API: credentials on every route, tenants kept apart, the same redaction as
MQTT, bounded pages, injection payloads, audit of every read (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from test_hub_service import wait_until
from test_hub_store import incoming

from hub.api import ApiContext, create_app
from hub.api.audit import AuditBuffer
from hub.config import HubConfig, hash_key, parse_config
from hub.store import Store

SECRET = "PO-BOLT-ONLY-7f3a"  # a customer order only bolt's packets carry
RESTRICTED = {"weldCurrent": {"value": 212.5, "uom": "AMP", "class": "restricted"},
              "cycleTime": {"value": 41.0, "class": "public"},
              "pressForce": {"value": 8.1, "class": "partner"}}
ROUTES = ["/v1/orders", "/v1/orders/WO-1001", "/v1/orders/WO-1001/operations",
          "/v1/events", "/v1/stream", "/metrics"]


class Api:
    def __init__(self, client: TestClient, keys: dict[str, str], store: Store) -> None:
        self.client = client
        self.keys = keys
        self.store = store

    def get(self, who: str | None, path: str, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.keys[who]}"} if who else {}
        return self.client.get(path, params=params, headers=headers)


def make_config(tmp_path: Path, db_url: str) -> tuple[HubConfig, dict[str, str]]:
    keys = {name: secrets.token_urlsafe(32) for name in ("acme", "bolt", "cargo", "admin")}
    (tmp_path / "acme.key").write_text(keys["acme"] + "\n")
    (tmp_path / "admin.key").write_text(keys["admin"])
    config = parse_config(f"""
hub: {{database: "{db_url}"}}
api: {{port: 0, max_limit: 50, admin_key_file: "{tmp_path / 'admin.key'}",
      rate_per_s: 100000, burst: 100000, audit_flush_s: 0.05}}
suppliers:
  acme: {{api_key_file: "{tmp_path / 'acme.key'}",
         station_names: {{plant1/body/line-3/welder-2: "Welding cell 2"}}}}
  bolt: {{partner_params: true, api_key_hash: "{hash_key(keys['bolt'])}"}}
  cargo: {{api_key_hash: "{hash_key(keys['cargo'])}"}}
routes:
  - {{supplier: acme, work_orders: [WO-1001, WO-1003]}}
  - {{supplier: bolt, work_orders: [WO-1002, WO-1003]}}
  - {{supplier: cargo, customer_orders: ["PO-CARGO-*"]}}
""", "api-test.yaml")
    return config, keys


@pytest.fixture
def api(tmp_path: Path, hub_db_url: str) -> Iterator[Api]:
    config, keys = make_config(tmp_path, hub_db_url)
    store = Store(hub_db_url, config)
    batch = [incoming(seq, work_order="WO-1001", params=RESTRICTED) for seq in (1, 2, 3)]
    batch += [incoming(seq, work_order="WO-1003", operation="OP40") for seq in (4, 5)]
    raw = [incoming(seq, work_order="WO-1002") for seq in (6, 7)]
    for item in raw:  # give bolt's packets a marker that must never reach anyone else
        item.raw["data"]["workOrder"]["customerOrders"] = [SECRET]
    store.store_batch(batch + raw)
    with TestClient(create_app(ApiContext(config, store))) as client:
        yield Api(client, keys, store)
    store.close()


@pytest.mark.parametrize("path", ROUTES)
def test_every_route_refuses_without_credentials(api: Api, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-key"}, {"Authorization": "Basic eA=="},
                    {"Authorization": f"Bearer {api.keys['acme']}x"}):
        response = api.client.get(path, headers=headers)
        assert response.status_code == 401, (path, headers, response.text)
        assert response.headers["www-authenticate"] == "Bearer"


def test_metrics_are_for_the_operator_only(api: Api) -> None:
    # Per-supplier fan-out lag names every supplier: a supplier's key is refused.
    assert api.get("acme", "/metrics").status_code == 403
    # An API without a running hub service has no metrics to give.
    assert api.get("admin", "/metrics").status_code == 503


@pytest.mark.parametrize("path", ["/v1/orders/WO-1001", "/v1/orders/WO-1001/operations"])
def test_another_suppliers_order_is_not_found(api: Api, path: str) -> None:
    assert api.get("acme", path).status_code == 200
    for other in ("bolt", "cargo"):
        response = api.get(other, path)
        assert response.status_code == 404
        # The same answer as for an order that does not exist at all.
        assert response.json() == api.get(other, "/v1/orders/WO-nope").json()
    assert api.get("admin", path).status_code == 403


def test_each_supplier_sees_its_own_orders_redacted(api: Api) -> None:
    acme = api.get("acme", "/v1/orders").json()
    assert [o["workOrder"] for o in acme["orders"]] == ["WO-1001", "WO-1003"]
    assert acme["next"] is None
    bolt = api.get("bolt", "/v1/orders").json()
    assert [o["workOrder"] for o in bolt["orders"]] == ["WO-1002", "WO-1003"]
    assert api.get("cargo", "/v1/orders").json() == {"orders": [], "next": None}

    order = api.get("acme", "/v1/orders/WO-1001").json()
    (op,) = order["operations"]
    # Newest by sequence; the station is the public name acme is given.
    assert op["quantities"]["good"] == 30 and op["state"] == "Running"
    assert op["station"] == "Welding cell 2"
    assert api.get("bolt", "/v1/orders/WO-1003/operations").json()["operations"][0][
        "station"] == "plant1/body/line-3/welder-2"
    assert SECRET not in json.dumps(acme) + json.dumps(order)


def test_event_feed_pages_and_redacts(api: Api) -> None:
    seen: list[dict[str, Any]] = []
    cursor = 0
    for _ in range(10):
        page = api.get("acme", "/v1/events", after=cursor, limit=2).json()
        seen += page["events"]
        if not page["events"]:
            break
        assert page["next"] > cursor
        cursor = page["next"]
    assert [int(e["sequence"]) for e in seen] == [1, 2, 3, 4, 5]
    for event in seen:
        assert set(event["data"].get("params", {})) <= {"cycleTime"}
        assert SECRET not in json.dumps(event)
    bolt = api.get("bolt", "/v1/events", limit=50).json()["events"]
    assert [int(e["sequence"]) for e in bolt] == [4, 5, 6, 7]
    # The feed is positioned after everything: nothing new.
    assert api.get("acme", "/v1/events", after=cursor).json() == {"events": [], "next": cursor}


@pytest.mark.parametrize(("params", "status"), [
    ({"limit": 51}, 422), ({"limit": 0}, 422), ({"limit": -1}, 422), ({"after": -1}, 422),
    ({"after": 2**63}, 422), ({"limit": 50}, 200),
])
def test_limits_are_bounded(api: Api, params: dict[str, Any], status: int) -> None:
    assert api.get("acme", "/v1/events", **params).status_code == status
    if "after" not in params:
        assert api.get("acme", "/v1/orders", **params).status_code == status


def test_orders_page_with_a_cursor(api: Api) -> None:
    first = api.get("bolt", "/v1/orders", limit=1).json()
    assert [o["workOrder"] for o in first["orders"]] == ["WO-1002"]
    second = api.get("bolt", "/v1/orders", limit=1, after=first["next"]).json()
    assert [o["workOrder"] for o in second["orders"]] == ["WO-1003"]
    third = api.get("bolt", "/v1/orders", limit=1, after="WO-1003").json()
    assert third == {"orders": [], "next": None}


INJECTIONS = [
    "' OR '1'='1", "' OR 1=1 --", "\" OR \"\"=\"", "1; DROP TABLE packets; --",
    "WO-1002' --", "WO-1002\" --", "WO-1001' UNION SELECT * FROM op_state --",
    "%", "%%", "_", "WO-100_", "WO-100%", "*", "WO-*", "?", "WO-100?", "[!x]*", "WO-100[0-9]",
    "..", "../", "../../etc/passwd", "..%2f..%2f", "%2e%2e%2f", "/v1/orders", "\\", "\\x00",
    "\x00", "%00", "WO-1002%00", "\n", "\r\nX-Injected: 1", "<script>alert(1)</script>",
    "${jndi:ldap://x}", "{{7*7}}", "$(id)", "`id`", "|id", ";id", "&&id", "null", "None",
    "undefined", "true", "-1", "0", "1e309", "NaN", "Infinity", "9" * 40, "A" * 129, "A" * 4000,
    "é", "WO-\uff11\uff10\uff10\uff12", "WO\u202e-1002", "\ufeffWO-1002", "\U0001f4a9",
    "%ED%A0%80", "%FF%FE", "WO-1002 ", " WO-1002",
    "WO-1002\t", "wo-1002", "WO-1002/OP30", "WO-1002#", "WO-1002+", "$share/x/#", "#", "+",
    "'; SELECT pg_sleep(5); --", "1 AND SLEEP(5)", "$where", "{\"$gt\": \"\"}", "[]", "{}",
]


def _no_foreign_rows(who: str, response: Any) -> None:
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        return
    body = response.json()
    orders = body.get("orders") or []
    operations = body.get("operations") or []
    events = body.get("events") or []
    allowed = {"acme": {"WO-1001", "WO-1003"}, "cargo": set()}[who]
    assert {o["workOrder"] for o in orders} <= allowed
    assert {o["workOrder"] for o in operations} <= allowed
    assert {e["data"]["workOrder"]["id"] for e in events} <= allowed
    if "workOrder" in body:
        assert body["workOrder"] in allowed
    assert SECRET not in response.text.replace(SECRET + "-", "")


def test_injection_payloads_give_no_500_and_no_foreign_row(api: Api) -> None:
    assert len(INJECTIONS) >= 50
    for raw in ("/v1/orders/%ED%A0%80", "/v1/orders/%FF/operations", "/v1/orders/%00"):
        _no_foreign_rows("acme", api.get("acme", raw))
    for payload in INJECTIONS:
        segment = quote(payload, safe="")
        for who in ("acme", "cargo"):
            for path in (f"/v1/orders/{segment}", f"/v1/orders/{segment}/operations"):
                _no_foreign_rows(who, api.get(who, path))
        for who in ("acme",):
            for name in ("after", "limit"):
                _no_foreign_rows(who, api.get(who, "/v1/orders", **{name: payload}))
                _no_foreign_rows(who, api.get(who, "/v1/events", **{name: payload}))
            # As an API key: the client can only send printable ASCII header values.
            if payload.isascii() and payload.isprintable():
                response = api.client.get("/v1/orders",
                                          headers={"Authorization": f"Bearer {payload}"})
                assert response.status_code == 401


def test_admin_assigns_an_order_to_a_supplier(api: Api) -> None:
    body = {"suppliers": ["cargo"], "due": "2026-11-30T12:00:00Z"}
    assert api.client.put("/v1/admin/orders/WO-1002/assignment", json=body).status_code == 401
    assert api.client.put("/v1/admin/orders/WO-1002/assignment", json=body, headers={
        "Authorization": f"Bearer {api.keys['acme']}"}).status_code == 403
    admin = {"Authorization": f"Bearer {api.keys['admin']}"}
    bad = api.client.put("/v1/admin/orders/WO-1002/assignment", headers=admin,
                         json={"suppliers": ["nobody"]})
    assert bad.status_code == 422
    bad = api.client.put("/v1/admin/orders/WO-1002/assignment", headers=admin,
                         json={"suppliers": ["cargo"], "due": "2026-11-30T12:00:00"})
    assert bad.status_code == 422
    ok = api.client.put("/v1/admin/orders/WO-1002/assignment", json=body, headers=admin)
    assert ok.status_code == 200, ok.text
    order = api.get("cargo", "/v1/orders/WO-1002").json()
    assert order["due"] == "2026-11-30T12:00:00.000Z"
    # The assignment is an event of cargo's feed, followed by the order's history so far,
    # each event marked as backfill.
    added, *history = api.get("cargo", "/v1/events").json()["events"]
    assert added["type"] == "keyop.assignment.added"
    assert added["data"]["workOrder"] == {"id": "WO-1002"}
    assert (datetime.fromisoformat(added["data"]["assignment"]["due"])
            == datetime(2026, 11, 30, 12, tzinfo=UTC))
    assert [int(e["sequence"]) for e in history] == [6, 7]
    assert all(e["keyopbackfill"] is True for e in history)
    # Partner params still follow cargo's own rules.
    assert api.get("acme", "/v1/orders/WO-1002").status_code == 404


def _audited(store: Store, skip: int) -> dict[tuple[Any, ...], tuple[int, int]]:
    """(supplier, path, status, query) -> (rows, requests) of the audit log past `skip` rows."""
    found: dict[tuple[Any, ...], tuple[int, int]] = {}
    for r in store.list_audit()[skip:]:
        assert r.at > 0 and r.method == "GET" and r.client
        rows, requests = found.get((r.supplier, r.path, r.status, r.query), (0, 0))
        found[(r.supplier, r.path, r.status, r.query)] = (rows + 1, requests + r.count)
    return found


def test_every_read_is_audited_refused_ones_aggregated(api: Api) -> None:
    before = len(api.store.list_audit())
    api.get("acme", "/v1/orders")
    api.get("bolt", "/v1/orders/WO-1001")
    for after in range(20):
        api.get(None, "/v1/events", after=after)
    api.client.get("/v1/events", headers={"Authorization": "Bearer not-a-key"})
    missing = "refused: credentials required (Authorization: Bearer <API key>)"
    unknown = (None, "/v1/events", 401, "refused: unknown API key")

    def written() -> bool:
        found = _audited(api.store, before)
        # Every request's row: the batch writer may put the last refusal in a later batch.
        return (found.get((None, "/v1/events", 401, missing), (0, 0))[1] == 20
                and found.get(unknown, (0, 0))[1] == 1)

    wait_until(written, "the audit rows written")
    found = _audited(api.store, before)
    assert set(found) == {("acme", "/v1/orders", 200, ""), ("bolt", "/v1/orders/WO-1001", 404, ""),
                          (None, "/v1/events", 401, missing),
                          (None, "/v1/events", 401, "refused: unknown API key")}
    assert found[("acme", "/v1/orders", 200, "")] == (1, 1)
    assert found[(None, "/v1/events", 401, "refused: unknown API key")] == (1, 1)
    # Refusals are counted in one row per (client, path, reason) and interval (0.05 s here),
    # not one row each.
    rows, requests = found[(None, "/v1/events", 401, missing)]
    assert requests == 20 and rows < 20


def test_audit_rows_are_aggregated_and_written_in_batches(api: Api) -> None:
    context = api.client.app.state.context  # type: ignore[attr-defined]
    buffer = AuditBuffer(context)  # no periodic writer: writes happen on flush only
    before = len(api.store.list_audit())
    entry = {"at": 1.0, "supplier": None, "method": "GET", "path": "/v1/orders", "query": "x",
             "status": 401, "client": "192.0.2.1", "count": 1}

    async def fill() -> None:
        for _ in range(500):
            await buffer.add_refusal(dict(entry), "unknown API key")
        await buffer.add_refusal({**entry, "client": "192.0.2.2"}, "unknown API key")
        await buffer.add({**entry, "status": 200, "supplier": "acme"})
        assert len(api.store.list_audit()) == before  # nothing written yet
        await buffer.flush()

    api.client.portal.call(fill)  # type: ignore[union-attr]
    rows = api.store.list_audit()[before:]
    assert sorted((r.client, r.status, r.count, r.query) for r in rows) == [
        ("192.0.2.1", 200, 1, "x"), ("192.0.2.1", 401, 500, "refused: unknown API key"),
        ("192.0.2.2", 401, 1, "refused: unknown API key")]


def test_openapi_docs(api: Api) -> None:
    assert api.client.get("/docs").status_code == 200
    spec = api.client.get("/openapi.json").json()
    assert {"/v1/orders", "/v1/orders/{order}", "/v1/orders/{order}/operations", "/v1/events",
            "/v1/stream"} <= set(spec["paths"])
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
