"""Routing and redaction: pure functions over a stored packet's JSON object.

Which suppliers a packet concerns (hub.yaml `routes`), and the copy one supplier may see: an
allow-list of docs/packet.md's fields (nothing else of the packet goes out), `params` by class
(`public` to every concerned supplier, `partner` only to suppliers allowed it, `restricted`
never), and the supplier's public station names instead of equipment paths. Identity (`id`,
`source`, `sequence`) stays as it was, so a supplier can dedupe resends.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin
from urllib.parse import quote

import pydantic_core
from pydantic import BaseModel
from pydantic_core import CoreSchema, SchemaSerializer, core_schema

from hub.config import HubConfig, Route, SupplierConfig
from sync import packet as pk


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


def station_name(path: str, supplier: SupplierConfig) -> str:
    """The name a supplier sees for an equipment path: its `station_names` public name, else
    the path itself."""
    names = supplier.station_names
    return names.get(path, path) if names else path


# -- the allow-list: docs/packet.md's fields, level by level, as sync/packet.py's models define
# them. Compiled once into a pydantic-core serializer of typed dicts that ignore extra keys:
# the encoder itself leaves out whatever docs/packet.md does not define, in Rust, at about the
# cost of a plain encode.

def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _fields_schema(model: type[BaseModel], *, leave_out: frozenset[str] = frozenset(),
                   given: Mapping[str, CoreSchema] | None = None) -> CoreSchema:
    """A model's fields (JSON names), each by its type's schema or the one `given`."""
    fields = {}
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key not in leave_out:
            schema = (given or {}).get(key) or _schema(info.annotation)
            fields[key] = core_schema.typed_dict_field(schema, required=False)
    return core_schema.typed_dict_schema(fields, extra_behavior="ignore")


def _schema(annotation: Any) -> CoreSchema:
    """How a value of this type goes to a supplier: a model as its fields only, lists and dicts
    of models item by item, anything else (scalars, lists of scalars, free-form JSON such as
    `epcis` and `scan.fields`) as it is."""
    if _is_model(annotation):
        return _fields_schema(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _schema(args[0])
    inner = [_schema(a) for a in args if a is not type(None)]
    if all(s["type"] == "any" for s in inner):
        return core_schema.any_schema()
    if origin in (Union, UnionType) and len(inner) == 1:
        return core_schema.nullable_schema(inner[0])
    if origin is list and len(inner) == 1:
        return core_schema.list_schema(inner[0])
    if origin is dict and len(inner) == 2:
        return core_schema.dict_schema(inner[0], inner[1])
    raise TypeError(f"{annotation}: hub/routing.py has no redaction rule for this type")


# The plant's signal origin (PLC addresses) is never a supplier's business.
_NEVER = frozenset({"origin"})
_PACKET = _fields_schema(pk.Packet, given={"data": _fields_schema(pk.Data, leave_out=_NEVER)})
_SERIALIZER = SchemaSerializer(_PACKET)


def _encode(event: dict[str, Any]) -> bytes:
    """The JSON of docs/packet.md's fields of an event (compact UTF-8 like json.dumps(separators=
    (",", ":"), ensure_ascii=False)).

    Shapes are the stored packet's, validated at ingest: a row written by hand with, say, a list
    where docs/packet.md has an object would have that value encoded as it is, with a warning.
    """
    return _SERIALIZER.to_json(event)


# EPCIS identifiers are URIs: a public name goes into them percent-encoded.
_URI_PREFIX = "urn:"
_RUN_IDS_MAX = 4096


@dataclass(frozen=True, slots=True)
class _Station:
    """How one renamed station is rewritten: its public name (plain and percent-encoded), and
    its path as it appears inside JSON text, to find any place still holding it."""

    public: str
    in_uri: str
    needle: bytes
    # Public run ids by (runId, workOrder, operation): a run sends many packets.
    run_ids: dict[tuple[str, Any, Any], str] = field(default_factory=dict)

    def run_id(self, run_id: str, work_order: Any, operation: Any) -> str:
        key = (run_id, work_order, operation)
        found = self.run_ids.get(key)
        if found is None:
            found = public_run_id(run_id, work_order, operation, self.public)
            if len(self.run_ids) >= _RUN_IDS_MAX:
                self.run_ids.clear()
            self.run_ids[key] = found
        return found


@dataclass(frozen=True, slots=True)
class _Rules:
    """One supplier's redaction, compiled once from its SupplierConfig."""

    classes: frozenset[str]
    names: frozenset[str] | None
    stations: dict[str, _Station]

    def kept(self, params: Any) -> Any:
        """The params this supplier may see: by class (`restricted`, and anything unexpected,
        never) and its `params:` list; `params` itself when that is all of them."""
        if params.__class__ is not dict:
            return {} if params else params
        classes, names = self.classes, self.names
        kept = {name: param for name, param in params.items()
                if param.__class__ is dict and param.get("class") in classes
                and (names is None or name in names)}
        return params if len(kept) == len(params) else kept


def _compile(supplier: SupplierConfig) -> _Rules:
    return _Rules(
        classes=frozenset({"public", "partner"} if supplier.partner_params else {"public"}),
        names=None if supplier.params is None else frozenset(supplier.params),
        stations={path: _Station(public, quote(public, safe=""),
                                 pydantic_core.to_json(path)[1:-1])
                  for path, public in (supplier.station_names or {}).items()},
    )


# Compiled rules by SupplierConfig identity (configs are frozen; an entry keeps its config
# alive, so the id is not reused while cached). Bounded: tests build configs by the thousand.
_COMPILED: dict[int, tuple[SupplierConfig, _Rules]] = {}
_COMPILED_MAX = 1024


def _rules(supplier: SupplierConfig) -> _Rules:
    entry = _COMPILED.get(id(supplier))
    if entry is not None and entry[0] is supplier:
        return entry[1]
    rules = _compile(supplier)
    if len(_COMPILED) >= _COMPILED_MAX:
        _COMPILED.clear()
    _COMPILED[id(supplier)] = (supplier, rules)
    return rules


def public_run_id(run_id: str, work_order: Any, operation: Any, public: str) -> str:
    """A run id without the station's real name, stable per run: mapping/station.py's
    `{workOrder}.{operation}.{station}.{n}` becomes `{workOrder}.{operation}.{public}.{n}`.

    A run id of any other shape becomes the public name and a digest of it, so no part of it
    is shown.
    """
    prefix = (f"{work_order}.{operation}."
              if isinstance(work_order, str) and isinstance(operation, str) else "")
    head, dot, count = run_id.rpartition(".")
    if prefix and dot and count.isdigit() and head.startswith(prefix) and len(head) > len(prefix):
        return f"{prefix}{public}.{count}"
    digest = hashlib.blake2b(run_id.encode(), digest_size=8).hexdigest()
    return f"{prefix}{public}.{digest}"


def _renamed(event: dict[str, Any], data: dict[str, Any], path: str,
             station: _Station) -> dict[str, Any]:
    """A shallow copy with the places docs/packet.md puts the path rewritten: subject, equipment
    (the public name replaces the whole hierarchy: id and level would leak it), runId."""
    new_data = {**data, "equipment": {"path": station.public}}
    run_id = data.get("runId")
    if isinstance(run_id, str):
        new_data["runId"] = station.run_id(run_id, (data.get("workOrder") or {}).get("id"),
                                           (data.get("operation") or {}).get("id"))
    out = {**event, "data": new_data}
    subject = event.get("subject")
    if isinstance(subject, str) and path in subject:
        out["subject"] = subject.replace(path, station.public)
    return out


def _scrubbed(value: Any, path: str, station: _Station) -> Any:
    """`value` rebuilt with the path rewritten in every string (keys too): EPCIS readPoint and
    bizLocation ids, scan codes and fields, free text."""
    if isinstance(value, str):
        if path not in value:
            return value
        return value.replace(path, station.in_uri if value.startswith(_URI_PREFIX)
                             else station.public)
    if isinstance(value, Mapping):
        return {_scrubbed(k, path, station): _scrubbed(v, path, station)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v, path, station) for v in value]
    return value


def redact(event: dict[str, Any], supplier: SupplierConfig) -> bytes:
    """The JSON bytes of the copy of a stored packet (its JSON object) this supplier may see.

    Only what docs/packet.md defines: its envelope attributes, data fields and the fields of each
    nested object; unknown fields and CloudEvents extensions are left out, and so is `origin`.
    `params` by class (`public`; `partner` with `partner_params`; never `restricted`) and the
    supplier's `params:` list. With `station_names`, the station's public name replaces its
    equipment path everywhere (subject, equipment, runId, epcis, scan, free text). Identity
    (`id`, `source`, `sequence`, ...) is kept, so the supplier can dedupe resends.
    """
    entry = _COMPILED.get(id(supplier))
    rules = entry[1] if entry is not None and entry[0] is supplier else _rules(supplier)
    data = event.get("data")
    if data.__class__ is not dict:
        return _encode({k: v for k, v in event.items() if k != "data"})
    if "params" in data:
        params = data["params"]
        kept = rules.kept(params)
        if kept is not params:
            data = dict(data)
            if kept:
                data["params"] = kept
            else:
                del data["params"]
            event = {**event, "data": data}
    if rules.stations:
        equipment = data.get("equipment")
        path = equipment.get("path") if isinstance(equipment, dict) else None
        station = rules.stations.get(path) if isinstance(path, str) else None
        if station is not None and path is not None:
            return _renamed_json(event, data, path, station)
    return _SERIALIZER.to_json(event)  # _encode, inlined: the fan-out's hot path


def _renamed_json(event: dict[str, Any], data: dict[str, Any], path: str,
                  station: _Station) -> bytes:
    copy = _renamed(event, data, path, station)
    payload = _encode(copy)
    if station.needle in payload:
        # The path is still somewhere in data (epcis, scan, free text): rewrite it there.
        copy["data"] = _scrubbed(copy["data"], path, station)
        payload = _encode(copy)
    return payload


def redacted(event: dict[str, Any], supplier: SupplierConfig) -> dict[str, Any]:
    """`redact` as a JSON object (the API's events): the same bytes MQTT carries, decoded."""
    result: dict[str, Any] = pydantic_core.from_json(redact(event, supplier))
    return result


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
