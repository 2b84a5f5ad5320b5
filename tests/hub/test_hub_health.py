"""The hub's /api/health and /api/ready: no API key, the reasons when not ready."""

from __future__ import annotations

from fastapi.testclient import TestClient

from hub.api import ApiContext, create_app
from hub.config import parse_config
from hub.store import Store


def test_ready_names_a_broker_that_is_down_and_needs_no_key(hub_db_url: str) -> None:
    config = parse_config(f'hub: {{id: hub, database: "{hub_db_url}"}}\n', "health.yaml")
    store = Store(hub_db_url)
    context = ApiContext(config, store)
    up = [False]
    context.broker_up = lambda: up[0]
    try:
        with TestClient(create_app(context)) as client:
            assert client.get("/api/health").json() == {"status": "ok"}
            ready = client.get("/api/ready")
            assert ready.status_code == 503
            assert ready.json() == {"ready": False, "reasons": ["broker not connected"]}
            up[0] = True
            assert client.get("/api/ready").json() == {"ready": True, "reasons": []}
            assert client.get("/metrics").status_code == 401  # the rest keeps its key
    finally:
        context.close()
        store.close()
