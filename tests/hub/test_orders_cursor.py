"""GET /v1/orders pages: a cursor names only the asking supplier's own orders, however many
other orders the plant has between them (a page stops after a bounded scan)."""

from __future__ import annotations

import secrets
from pathlib import Path

from fastapi.testclient import TestClient
from hubkit import incoming

from hub.api import create_app
from hub.api.context import ApiContext
from hub.config import hash_key, parse_config
from hub.orders import SCAN_ROWS
from hub.store import Store


def test_a_cursor_never_names_another_suppliers_order(tmp_path: Path, hub_db_url: str) -> None:
    key = secrets.token_urlsafe(32)
    config = parse_config(f"""
hub: {{database: "{hub_db_url}"}}
api: {{port: 0, max_limit: 50, rate_per_s: 100000, burst: 100000}}
suppliers:
  acme: {{api_key_hash: "{hash_key(key)}"}}
  bolt: {{}}
routes:
  - {{supplier: acme, work_orders: [WO-1001, WO-9999]}}
  - {{supplier: bolt, work_orders: ["WO-5*"]}}
""", "orders-cursor.yaml")
    store = Store(hub_db_url, config)
    foreign = SCAN_ROWS + 1_400  # more than one bounded scan of other orders
    seq = 1
    store.store_batch([incoming(seq, work_order="WO-1001")])
    for start in range(0, foreign, 500):
        batch = [incoming(seq + 1 + i, work_order=f"WO-5-PLANT-SECRET-{start + i:05d}")
                 for i in range(min(500, foreign - start))]
        store.store_batch(batch)
        seq += len(batch)
    store.store_batch([incoming(seq + 1, work_order="WO-9999")])
    context = ApiContext(config, store)
    try:
        with TestClient(create_app(context)) as client:
            auth = {"Authorization": f"Bearer {key}"}
            seen: list[str] = []
            cursors: list[str] = []
            after: str | None = None
            for _ in range(10):
                params = {"limit": 50} if after is None else {"limit": 50, "after": after}
                page = client.get("/v1/orders", params=params, headers=auth)
                assert page.status_code == 200, page.text
                body = page.json()
                seen += [order["workOrder"] for order in body["orders"]]
                after = body.get("next")
                if after is None:
                    break
                cursors.append(after)
            assert seen == ["WO-1001", "WO-9999"]
            assert all("SECRET" not in cursor for cursor in cursors), cursors
    finally:
        context.close()
        store.close()
