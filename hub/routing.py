"""Routing and redaction: pure functions over a stored packet's JSON object.

Which suppliers a packet concerns (hub.yaml `routes`), and the copy one supplier may see
(PACKET.md `params` classes: `public` to every concerned supplier, `partner` only to suppliers
allowed it, `restricted` never). Everything else of the packet stays as it was, `id` included,
so a supplier can dedupe resends.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

from hub.config import HubConfig, Route, SupplierConfig


def _any_match(patterns: list[str], values: list[str]) -> bool:
    return any(fnmatchcase(value, pattern) for pattern in patterns for value in values)


def _under(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")


def route_matches(route: Route, event: Mapping[str, Any]) -> bool:
    """True when every criterion the route gives matches the event."""
    data = event.get("data") or {}
    work_order = data.get("workOrder") or {}
    operation = data.get("operation") or {}
    checks: list[tuple[list[str] | None, list[str]]] = [
        (route.work_orders, [work_order["id"]] if "id" in work_order else []),
        (route.customer_orders, list(work_order.get("customerOrders") or [])),
        (route.operations, [operation["id"]] if "id" in operation else []),
        (route.types, [event.get("type", "")]),
    ]
    for patterns, values in checks:
        if patterns is not None and not _any_match(patterns, values):
            return False
    if route.equipment is not None:
        path = (data.get("equipment") or {}).get("path", "")
        if not any(_under(path, prefix) for prefix in route.equipment):
            return False
    return True


def suppliers_for(event: Mapping[str, Any], config: HubConfig) -> list[str]:
    """The suppliers a packet concerns (each once, in hub.yaml order)."""
    found: list[str] = []
    for route in config.routes:
        if route.supplier not in found and route_matches(route, event):
            found.append(route.supplier)
    return found


def param_allowed(name: str, param: Mapping[str, Any], supplier: SupplierConfig) -> bool:
    """Whether one process value may go to a supplier."""
    klass = param.get("class")
    if klass == "public":
        allowed = True
    elif klass == "partner":
        allowed = supplier.partner_params
    else:
        # `restricted`, and anything unexpected, never leaves the hub.
        allowed = False
    if supplier.params is not None and name not in supplier.params:
        allowed = False
    return allowed


def redacted(event: Mapping[str, Any], supplier: SupplierConfig) -> dict[str, Any]:
    """A copy of the event with the params this supplier may not see removed."""
    out = dict(event)
    data = event.get("data")
    if isinstance(data, Mapping) and "params" in data:
        params = data.get("params") or {}
        kept = {
            name: value
            for name, value in params.items()
            if isinstance(value, Mapping) and param_allowed(name, value, supplier)
        }
        new_data = dict(data)
        if kept:
            new_data["params"] = kept
        else:
            del new_data["params"]
        out["data"] = new_data
    return out


def redact(event: Mapping[str, Any], supplier: SupplierConfig) -> bytes:
    """The JSON bytes to publish to one supplier."""
    return json.dumps(redacted(event, supplier), separators=(",", ":"), ensure_ascii=False).encode()


def state_of(event: Mapping[str, Any]) -> bytes | None:
    """The small retained state document of an operation event, or None for other events."""
    if not str(event.get("type", "")).startswith("keyop.operation."):
        return None
    data = event.get("data") or {}
    state = {
        "type": event.get("type"),
        "state": (data.get("state") or {}).get("value"),
        "quantities": data.get("quantities"),
        "time": event.get("time"),
        "source": event.get("source"),
        "sequence": event.get("sequence"),
        "id": event.get("id"),
    }
    return json.dumps(state, separators=(",", ":")).encode()
