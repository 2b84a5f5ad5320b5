"""Routing and redaction: pure functions over a stored packet's JSON object.

Which suppliers a packet concerns (hub.yaml `routes`), and the copy one supplier may see
(PACKET.md `params` classes: `public` to every concerned supplier, `partner` only to suppliers
allowed it, `restricted` never). Everything else of the packet stays as it was, `id` included,
so a supplier can dedupe resends.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any

import pydantic_core

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


_WILD = frozenset("*?[")


class Router:
    """hub.yaml routes compiled once, plus the API's order assignments.

    Routes that only name literal work orders are looked up in a dict; the rest are tried one
    by one. The result is the same as `suppliers_for`, in hub.yaml order, assignments after.
    """

    def __init__(self, config: HubConfig,
                 assignments: Mapping[str, Iterable[str]] | None = None) -> None:
        self.config = config
        self._order = {name: i for i, name in enumerate(config.suppliers)}
        self._by_order: dict[str, set[str]] = {}
        self._general: list[Route] = []
        for route in config.routes:
            literal = route.work_orders is not None and all(
                not (_WILD & set(p)) for p in route.work_orders)
            others = (route.customer_orders, route.operations, route.types, route.equipment)
            if literal and all(c is None for c in others):
                for work_order in route.work_orders or []:
                    self._by_order.setdefault(work_order, set()).add(route.supplier)
            else:
                self._general.append(route)
        self.assigned: dict[str, set[str]] = {}
        for work_order, names in (assignments or {}).items():
            self.assigned[work_order] = {n for n in names if n in config.suppliers}

    def suppliers_for(self, event: Mapping[str, Any]) -> list[str]:
        """The suppliers a packet concerns (each once)."""
        data = event.get("data") or {}
        work_order = (data.get("workOrder") or {}).get("id") if isinstance(data, Mapping) else None
        found: set[str] = set()
        if work_order is not None:
            found |= self._by_order.get(work_order, set())
            found |= self.assigned.get(work_order, set())
        for route in self._general:
            if route.supplier not in found and route_matches(route, event):
                found.add(route.supplier)
        if len(found) <= 1:
            return list(found)
        return sorted(found, key=lambda name: self._order.get(name, len(self._order)))

    def concerns(self, supplier: str, event: Mapping[str, Any]) -> bool:
        return supplier in self.suppliers_for(event)


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


# Data fields that describe the plant's own wiring (PLC addresses), never a supplier's business.
_INTERNAL_DATA = ("origin",)


def redacted(event: Mapping[str, Any], supplier: SupplierConfig) -> dict[str, Any]:
    """A copy of the event as this supplier may see it: params it may not see removed, the
    plant's signal origin removed, station paths replaced by their public names."""
    out = dict(event)
    data = event.get("data")
    if not isinstance(data, Mapping):
        return out
    new_data = dict(data)
    if "params" in data:
        params = data.get("params") or {}
        kept = {
            name: value
            for name, value in params.items()
            if isinstance(value, Mapping) and param_allowed(name, value, supplier)
        }
        if kept:
            new_data["params"] = kept
        else:
            del new_data["params"]
    for name in _INTERNAL_DATA:
        new_data.pop(name, None)
    equipment = data.get("equipment")
    if supplier.station_names and isinstance(equipment, Mapping):
        public = supplier.station_names.get(str(equipment.get("path", "")))
        if public is not None:
            # The public name replaces the whole hierarchy: path, id and level would leak it.
            new_data["equipment"] = {"path": public}
    out["data"] = new_data
    return out


def redact(event: Mapping[str, Any], supplier: SupplierConfig) -> bytes:
    """The JSON bytes to publish to one supplier."""
    # pydantic-core's encoder: compact UTF-8 like json.dumps(separators=(",", ":"),
    # ensure_ascii=False), about four times faster on the fan-out's hot path.
    return pydantic_core.to_json(redacted(event, supplier))


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
