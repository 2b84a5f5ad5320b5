"""The supplier API's OpenAPI contract, checked in CI: every route has a response model and
documented errors, operation ids are stable, the supplier and operator specs are separate,
/docs loads nothing from outside; and schemathesis, driving a real hub (uvicorn on loopback)
with requests generated from the spec, finds no server error and no answer the spec does not
allow."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hubkit import RunningHub, incoming
from hypothesis import HealthCheck, given, settings
from schemathesis import checks as st_checks
from schemathesis.specs.openapi import checks as oa_checks

from devstack.mosquitto import PrivateBroker
from hub.config import HubConfig, hash_key, parse_config
from hub.store import Store

# Changing one breaks every client generated from the spec: a test says so first.
SUPPLIER_OPERATIONS = {
    ("get", "/v1/orders"): "listOrders",
    ("get", "/v1/orders/{order}"): "getOrder",
    ("get", "/v1/orders/{order}/operations"): "listOrderOperations",
    ("get", "/v1/events"): "listEvents",
    ("get", "/v1/stream"): "streamEvents",
    ("get", "/v1/alerts"): "listAlerts",
    ("get", "/v1/hub/status"): "getHubStatus",
}
ADMIN_OPERATIONS = {
    ("put", "/v1/admin/orders/{order}/assignment"): "putAssignment",
    ("get", "/v1/admin/webhooks"): "listWebhooks",
    ("get", "/metrics"): "getMetrics",
}
ERRORS = {"401", "403", "413", "422", "429"}
ERROR_REF = "#/components/schemas/ApiError"
# Generated requests per operation: enough to reach each parameter's edges, bounded in time.
EXAMPLES = 60


def _config(broker: PrivateBroker, db: str, keys: dict[str, str]) -> HubConfig:
    return parse_config(f"""
hub: {{id: hub, database: "{db}"}}
api: {{port: 0, rate_per_s: 100000, burst: 100000, max_limit: 50,
      admin_key_hash: "{hash_key(keys['admin'])}"}}
mqtt: {{host: {broker.host}, port: {broker.port}, client_id: keyop-hub-contract,
        share_group: contract}}
suppliers:
  acme: {{api_key_hash: "{hash_key(keys['acme'])}"}}
  bolt: {{api_key_hash: "{hash_key(keys['bolt'])}"}}
orders:
  WO-1001: {{due: "2026-11-18T10:00:00Z", planned: 500}}
routes:
  - {{supplier: acme, work_orders: ["WO-1001", "WO-1003"]}}
  - {{supplier: bolt, work_orders: ["WO-1002"]}}
""", "contract-hub.yaml")


@pytest.fixture
def hub(broker: PrivateBroker, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A running hub with a few orders (one assigned and not started), and its API's URL."""
    keys = {name: secrets.token_urlsafe(32) for name in ("acme", "bolt", "admin")}
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    store = Store(db)
    store.store_batch([incoming(seq, work_order="WO-1001") for seq in (1, 2, 3)]
                      + [incoming(seq, work_order="WO-1002") for seq in (4, 5)])
    store.set_assignment("WO-1003", ["acme"], 1_900_000_000.0)
    store.close()
    running = RunningHub(_config(broker, db, keys), broker)
    try:
        api = running.service.api
        assert api is not None and api.port
        yield f"http://127.0.0.1:{api.port}", keys
    finally:
        running.close()


def _specs(base: str) -> tuple[dict[str, Any], dict[str, Any]]:
    supplier = httpx.get(f"{base}/v1/openapi.json", timeout=10).json()
    admin = httpx.get(f"{base}/admin/openapi.json", timeout=10).json()
    return supplier, admin


def _operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method, path): op for path, ops in spec["paths"].items()
            for method, op in ops.items()}


def _check_operation(key: tuple[str, str], op: dict[str, Any]) -> None:
    responses = op["responses"]
    assert ERRORS <= set(responses), (key, sorted(responses))
    for status, answer in responses.items():
        content = answer.get("content", {})
        assert content, (key, status, "no documented body")
        if status.startswith(("4", "5")):
            assert content["application/json"]["schema"]["$ref"] == ERROR_REF, (key, status)
    ok = responses["200"]["content"]
    schema = (ok.get("application/json") or ok.get("text/event-stream")
              or next(iter(ok.values())))["schema"]
    # A model (a $ref), or a typed text body (SSE, Prometheus), never an empty schema.
    assert schema.get("$ref") or schema.get("type") == "string", (key, schema)


def test_the_documents(hub: tuple[str, dict[str, str]]) -> None:
    base, _ = hub
    supplier, admin = _specs(base)
    found = _operations(supplier)
    assert {k: op["operationId"] for k, op in found.items()} == SUPPLIER_OPERATIONS
    assert {k: op["operationId"] for k, op in _operations(admin).items()} == ADMIN_OPERATIONS
    for spec in (supplier, admin):
        assert spec["servers"] and spec["servers"][0]["url"]
        for key, op in _operations(spec).items():
            _check_operation(key, op)
    # The supplier's document names nothing of the operator's.
    assert "Assignment" not in supplier["components"]["schemas"]
    assert "/metrics" not in json.dumps(supplier["paths"])
    stream = found[("get", "/v1/stream")]["responses"]["200"]["content"]
    assert "text/event-stream" in stream
    assert stream["text/event-stream"]["schema"]["x-event-data"]["$ref"].endswith(
        "/CloudEvent")
    # `after` is one type wherever it pages, and `next` is that type.
    afters = {json.dumps(p["schema"]["anyOf"], sort_keys=True) for op in found.values()
              for p in op.get("parameters", []) if p["name"] == "after"}
    assert len(afters) == 1
    cursor = json.loads(afters.pop())[0]
    assert cursor["type"] == "string"
    schemas = supplier["components"]["schemas"]
    for page in ("OrderPage", "EventPage", "AlertPage"):
        field = schemas[page]["properties"]["next"]
        text = field["anyOf"][0] if "anyOf" in field else field
        assert {k: text[k] for k in cursor} == cursor, page
    # No copy of FastAPI's default spec at the old place.
    assert httpx.get(f"{base}/openapi.json", timeout=10).status_code == 401


def test_docs_load_nothing_from_outside(hub: tuple[str, dict[str, str]]) -> None:
    base, _ = hub
    for page in ("/docs", "/admin/docs"):
        html = httpx.get(f"{base}{page}", timeout=10).text
        assert not re.search(r"https?://|//cdn", html), html
        for asset in re.findall(r'(?:src|href)="([^"]+)"', html):
            answer = httpx.get(f"{base}{asset}", timeout=10)
            assert answer.status_code == 200 and len(answer.content) > 1000, asset
    assert "SwaggerUIBundle" in httpx.get(f"{base}/docs/assets/swagger-ui-bundle.js",
                                          timeout=10).text


def test_last_event_id_and_after_together_are_refused(hub: tuple[str, dict[str, str]]
                                                      ) -> None:
    base, keys = hub
    answer = httpx.get(f"{base}/v1/stream", params={"after": "1"}, timeout=10,
                       headers={"Authorization": f"Bearer {keys['acme']}",
                                "Last-Event-ID": "2"})
    assert answer.status_code == 400
    body = answer.json()
    assert body["status"] == 400 and "Last-Event-ID" in body["detail"] and body["errors"] == []


def test_hub_status_for_every_supplier(hub: tuple[str, dict[str, str]]) -> None:
    base, keys = hub
    for who in ("acme", "bolt"):
        status = httpx.get(f"{base}/v1/hub/status", timeout=10,
                           headers={"Authorization": f"Bearer {keys[who]}"}).json()
        assert status["hub"] == "hub" and status["online"] is True
        assert status["lastIngest"] is not None and status["ingestLagSeconds"] >= 0


CHECKS = [st_checks.not_a_server_error, oa_checks.status_code_conformance,
          oa_checks.content_type_conformance, oa_checks.response_schema_conformance,
          oa_checks.response_headers_conformance]


@pytest.mark.timeout(240)
def test_generated_requests_find_no_error(hub: tuple[str, dict[str, str]]) -> None:
    base, keys = hub
    schema = schemathesis.openapi.from_url(f"{base}/v1/openapi.json")
    ran = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/v1/stream":
            continue  # a stream does not end: its contract is tested above and in test_hub_api
        ran.append(operation.path)

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            for who in ("acme", None):
                headers = {"Authorization": f"Bearer {keys[who]}"} if who else {}
                response = case.call(base_url=base, headers=headers, timeout=10)
                case.validate_response(response, checks=CHECKS)

        run()
    assert sorted(ran) == sorted(p for _, p in SUPPLIER_OPERATIONS if p != "/v1/stream")


_JSON_BLOCK = re.compile(r"^```json\n(.*?)^```", re.MULTILINE | re.DOTALL)


def test_the_api_docs_examples_are_what_the_api_answers() -> None:
    """Each JSON example of docs/api.md is a valid answer of the model it shows."""
    from hub.api import models
    from hub.api.errors import ApiError

    text = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    shown = set()
    for block in _JSON_BLOCK.findall(text):
        example = json.loads(block)
        model = (models.OrderPage if "orders" in example else
                 models.OrderDetail if "timeline" in example else
                 ApiError if "detail" in example else models.HubStatus)
        model.model_validate(example)
        shown.add(model.__name__)
    assert shown == {"OrderPage", "OrderDetail", "ApiError", "HubStatus"}
