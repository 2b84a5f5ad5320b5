"""Property: for thousands of generated packets and supplier policies, no supplier's copy
(MQTT payload or API event) holds a field docs/packet.md does not define, a param it may not see,
the plant's signal origin, or, when the supplier is given a public station name, the station's
equipment path."""

from __future__ import annotations

import json
import re
from typing import Any

from factories import progress_draft, render_event
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.config import SupplierConfig
from hub.routing import redact, redacted
from sync import packet as pk

NAMES = ["weldCurrent", "pressForce", "cycleTime", "oilTemp", "torque", "x", "class", "params"]
CLASSES = ["public", "partner", "restricted", "Public", "", "secret"]

params_st = st.dictionaries(
    st.sampled_from(NAMES),
    st.fixed_dictionaries({"value": st.one_of(st.integers(-(2**63), 2**63 - 1),
                                              st.floats(allow_nan=False, allow_infinity=False),
                                              st.text(max_size=5), st.booleans()),
                           "class": st.sampled_from(CLASSES)}),
    max_size=8,
)
policy_st = st.builds(
    SupplierConfig,
    partner_params=st.booleans(),
    params=st.one_of(st.none(), st.lists(st.sampled_from(NAMES), max_size=4)),
    station_names=st.one_of(st.none(), st.just({"plant1/body/line-3/welder-2": "Cell 2"})),
)


def allowed(name: str, klass: str, policy: SupplierConfig) -> bool:
    if klass == "public":
        ok = True
    elif klass == "partner":
        ok = policy.partner_params
    else:
        ok = False
    return ok and (policy.params is None or name in policy.params)


@settings(max_examples=1000, deadline=None)
@given(params=params_st, policies=st.lists(policy_st, min_size=3, max_size=3),
       with_origin=st.booleans())
def test_no_supplier_copy_holds_a_param_it_may_not_see(
        params: dict[str, Any], policies: list[SupplierConfig], with_origin: bool) -> None:
    extra: dict[str, Any] = {"origin": {"protocol": "opcua", "ref": "ns=3;s=W2"}} \
        if with_origin else {}
    event = json.loads(render_event(progress_draft(params=params or None, **extra)))
    for policy in policies:
        check_params(event, params, policy)


def check_params(event: dict[str, Any], params: dict[str, Any], policy: SupplierConfig) -> None:
    for copy in (json.loads(redact(event, policy)), redacted(event, policy)):
        data = copy["data"]
        assert "origin" not in data
        for name, value in (data.get("params") or {}).items():
            assert allowed(name, value["class"], policy), (name, value, policy)
        # Everything allowed is still there, unchanged.
        kept = {n for n, v in params.items() if allowed(n, v["class"], policy)}
        assert set(data.get("params") or {}) == kept
        assert all(data["params"][n] == params[n] for n in kept)
        if policy.station_names:
            assert data["equipment"] == {"path": "Cell 2"}
        # Identity is kept (suppliers dedupe on it); an operation event's subject is no path.
        assert {k: v for k, v in copy.items() if k != "data"} == {
            k: v for k, v in event.items() if k != "data"}
    if all(v["class"] in ("public", "partner", "restricted") for v in params.values()):
        pk.from_obj(json.loads(redact(event, policy)))  # still a valid packet


# -- packets of every type, unknown fields at every level -----------------------------------

# docs/packet.md's fields, written out here (not taken from hub.routing): `None` is a value kept as
# it is, `FREE` free-form JSON, a dict an object of exactly those fields, a one-item list a list
# of such objects, `{"*": ...}` an object keyed by free names.
FREE = "free-form"
REASON = {"code": None, "text": None}
SCHEMA: dict[str, Any] = {
    "specversion": None, "id": None, "source": None, "type": None, "subject": None,
    "time": None, "recordedtime": None, "sequence": None, "sourceepoch": None,
    "datacontenttype": None, "dataschema": None,
    "data": {
        "kopVersion": None,
        "workOrder": {"id": None, "erpOrder": None, "customerOrders": None},
        "operation": {"id": None, "name": None},
        "runId": None,
        "equipment": {"path": None, "id": None, "level": None},
        "state": {"value": None, "previous": None, "reason": REASON},
        "quantities": {"uom": None, "planned": None, "produced": None, "good": None,
                       "scrap": None, "rework": None},
        "delta": {"good": None, "scrap": None, "rework": None},
        "materials": [{"use": None, "materialId": None, "lotId": None, "epcs": None,
                       "quantity": None, "uom": None}],
        "parts": [{"serial": None, "status": None}],
        "alarm": {"code": None, "severity": None, "active": None, "text": None, "status": None},
        "params": {"*": {"value": None, "uom": None, "class": None}},
        "epcis": FREE,
        "scan": {"kind": None, "code": None, "fields": FREE},
        "gap": {"fromSequence": None, "toSequence": None, "reason": None},
        "estimate": {"ratePerHour": None, "completion": None, "due": None},
        "assignment": {"due": None},
        "tzOffset": None,
        "timeQuality": None,
        # `origin` is docs/packet.md's too, but never a supplier's: not listed, so never allowed.
    },
}


def outside_schema(value: Any, spec: Any, where: str = "") -> list[str]:
    """The places in `value` that the schema does not define."""
    if spec is None or spec == FREE:
        return []
    if isinstance(spec, list):
        return [p for i, item in enumerate(value)
                for p in outside_schema(item, spec[0], f"{where}[{i}]")]
    assert isinstance(value, dict), (where, value)
    if "*" in spec:
        return [p for k, v in value.items() for p in outside_schema(v, spec["*"], f"{where}.{k}")]
    found = [f"{where}.{k}" for k in value if k not in spec]
    return found + [p for k, v in value.items() if k in spec
                    for p in outside_schema(v, spec[k], f"{where}.{k}")]


LEAK = "leak-9f4c"
SEGMENT = st.from_regex(r"[a-z][a-z0-9-]{0,7}", fullmatch=True)
# Three to five levels (site/area/line/cell...): a path is never part of an id, source or time.
PATH = st.lists(SEGMENT, min_size=3, max_size=5).map("/".join)
# Text without "/" cannot hold a path by chance; the generator puts it in on purpose.
WORD = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"),
                             exclude_characters="/\\\""), min_size=1, max_size=8)
PUBLIC = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")),
                 min_size=1, max_size=12)
UNKNOWN_NAMES = st.one_of(st.sampled_from(["__all__", "origin", "internal", "plc", "Class",
                                           "traceparent", "partitionkey"]),
                          st.from_regex(r"x[A-Za-z0-9]{0,6}", fullmatch=True))
ORDER_TYPES = sorted(t for t in pk.EVENT_TYPES
                     if t.startswith(("keyop.operation.", "keyop.quality.", "keyop.alert.",
                                       "keyop.assignment.")))


@st.composite
def packets(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A valid packet of any type whose station is at a random path, with unknown fields
    (holding the path and a marker) sprinkled at every level; and the path."""
    path = draw(PATH)
    station = path.rsplit("/", 1)[1]
    type_ = draw(st.sampled_from(sorted(pk.EVENT_TYPES)))

    def text() -> str:
        # Free text, now and then naming the station's path.
        return draw(st.one_of(WORD, WORD.map(lambda w: f"{w} at {path}")))

    work_order, operation = draw(WORD.filter(str.strip)), draw(SEGMENT)
    data: dict[str, Any] = {
        "kopVersion": "1.0",
        "equipment": {"path": path, "id": station, "level": "WorkCell"},
        "tzOffset": "+08:00",
        "timeQuality": draw(st.sampled_from(["synced", "unsynced", "estimated"])),
    }
    is_order = type_ in ORDER_TYPES
    if is_order or draw(st.booleans()):
        data["workOrder"] = {"id": work_order, "erpOrder": draw(WORD),
                             "customerOrders": draw(st.lists(WORD, max_size=2))}
        data["operation"] = {"id": operation, "name": draw(WORD)}
        run = draw(st.integers(1, 99))
        data["runId"] = draw(st.sampled_from([f"{work_order}.{operation}.{station}.{run}",
                                              f"run-{station}-{run}"]))
    if type_.startswith("keyop.operation.") or draw(st.booleans()):
        good, scrap = draw(st.integers(0, 500)), draw(st.integers(0, 20))
        data["state"] = {"value": draw(st.sampled_from(["Running", "Paused", "Completed"])),
                         "previous": "Running", "reason": {"code": "R1", "text": text()}}
        data["quantities"] = {"uom": "C62", "planned": 500, "produced": good + scrap,
                              "good": good, "scrap": scrap, "rework": 0}
        data["delta"] = {"good": 1, "scrap": 0}
    if type_.startswith("keyop.assignment.") or draw(st.booleans()):
        data["assignment"] = {"due": draw(st.sampled_from([None, "2026-11-21T08:14:03.120Z"]))}
    if type_.endswith(".alarm") or type_.startswith("keyop.alert.") or draw(st.booleans()):
        data["alarm"] = {"code": "A7", "severity": "warning", "active": True, "text": text()}
    scan = {"kind": "barcode", "code": draw(st.one_of(WORD, st.just(path))),
            "fields": {"01": "09506000134352", "91": draw(st.one_of(WORD, st.just(path)))}}
    if type_.startswith(("keyop.station.context", "keyop.material.")):
        data["scan"] = scan
    if type_.startswith("keyop.material."):
        data["materials"] = [{"use": "Received", "materialId": "09506000134352",
                              "epcs": ["urn:epc:id:sgtin:0614141.107346.2017"]}]
        data["epcis"] = {"type": "ObjectEvent", "action": "OBSERVE",
                         "bizStep": "receiving", "disposition": "in_progress",
                         "readPoint": {"id": f"urn:keyop:equipment:{path}"},
                         "bizLocation": {"id": f"urn:keyop:equipment:{path}"},
                         "epcList": ["urn:epc:id:sgtin:0614141.107346.2017"],
                         "ext:station": {"at": [path, text()]}}
    if draw(st.booleans()):
        data["parts"] = [{"serial": "S-1", "status": "PASS"}, {"serial": "S-2", "status": "FAIL"}]
    if type_ == "keyop.outbox.gap":
        data["gap"] = {"fromSequence": pk.format_sequence(3), "toSequence": pk.format_sequence(9),
                       "reason": text()}
    data["params"] = draw(st.dictionaries(
        st.sampled_from([*NAMES, "__all__"]),
        st.fixed_dictionaries({"value": st.one_of(st.integers(0, 9), WORD, st.just(path)),
                               "class": st.sampled_from(["public", "partner", "restricted"])},
                              optional={"uom": st.just("AMP")}),
        max_size=6)) or None
    if data["params"] is None:
        del data["params"]
    if draw(st.booleans()):
        data["origin"] = {"protocol": "opcua", "device": "plc-1", "ref": f"ns=3;s={path}"}
    subject = f"{work_order}/{operation}" if is_order else path
    event = json.loads(render_event(pk.Draft(type_, subject, pk.parse_time(
        "2026-11-21T08:14:03.120Z"), data)))
    pk.from_obj(event)  # what the generator makes is a valid packet

    def sprinkle(obj: dict[str, Any]) -> None:
        for name in draw(st.lists(UNKNOWN_NAMES, max_size=2)):
            obj.setdefault(name, draw(st.sampled_from(
                [f"{LEAK} {path}", {LEAK: path}, [LEAK, path], 7])))

    d = event["data"]
    nested = [d.get(k) for k in ("workOrder", "operation", "equipment", "state", "quantities",
                                 "delta", "alarm", "scan", "gap")]
    nested += [(d.get("state") or {}).get("reason")]
    nested += list(d.get("materials") or []) + list(d.get("parts") or [])
    nested += list((d.get("params") or {}).values())
    for obj in [event, d, *nested]:
        if isinstance(obj, dict):
            sprinkle(obj)
    return event, path


@st.composite
def suppliers(draw: st.DrawFn, path: str) -> SupplierConfig:
    names = draw(st.sampled_from([None, "this", "other"]))
    public = draw(PUBLIC.filter(lambda p: path not in p))
    return SupplierConfig(
        partner_params=draw(st.booleans()),
        params=draw(st.one_of(st.none(), st.lists(st.sampled_from([*NAMES, "__all__"]),
                                                  max_size=4))),
        station_names=None if names is None else {
            path if names == "this" else "elsewhere/on/site": public},
    )


@settings(max_examples=1500, deadline=None)
@given(st.data())
def test_every_packet_type_reaches_suppliers_allow_listed_and_renamed(data: st.DataObject
                                                                      ) -> None:
    event, path = data.draw(packets())
    for policy in data.draw(st.lists(suppliers(path), min_size=1, max_size=3)):
        payload = redact(event, policy)
        copy = json.loads(payload)
        assert redacted(event, policy) == copy  # the API's copy is the MQTT payload
        assert outside_schema(copy, SCHEMA) == [], policy
        public = (policy.station_names or {}).get(path)
        original = event["data"].get("params") or {}
        got = copy["data"].get("params") or {}
        assert set(got) == {n for n, p in original.items()
                            if allowed(n, p["class"], policy)}
        for name, param in got.items():
            expected = {k: v for k, v in original[name].items() if k in ("value", "uom", "class")}
            if public is not None and isinstance(expected["value"], str):
                expected["value"] = expected["value"].replace(path, public)
            assert param == expected
        assert LEAK not in payload.decode()
        # Identity is what it was: suppliers dedupe on it.
        for name in SCHEMA:
            if name not in ("data", "subject"):
                assert copy[name] == event[name]
        text = payload.decode()
        if public is None:
            assert copy["subject"] == event["subject"]
            assert copy["data"]["equipment"] == {
                k: v for k, v in event["data"]["equipment"].items() if k in ("path", "id", "level")}
            continue
        assert path not in text, (policy, text)
        assert copy["data"]["equipment"] == {"path": public}
        if event["subject"] == path:
            assert copy["subject"] == public
        else:
            assert copy["subject"] == event["subject"]
        run_id = event["data"].get("runId")
        if run_id is not None:
            # The station's id gives way to its public name; the run stays recognisable.
            prefix = f"{event['data']['workOrder']['id']}.{event['data']['operation']['id']}."
            station = path.rsplit("/", 1)[1]
            head, _, count = run_id.rpartition(".")
            if head == f"{prefix}{station}":
                assert copy["data"]["runId"] == f"{prefix}{public}.{count}"
            else:
                assert re.fullmatch(re.escape(f"{prefix}{public}.") + "[0-9a-f]{16}",
                                    copy["data"]["runId"])
        epcis = copy["data"].get("epcis")
        if epcis is not None:
            assert epcis["readPoint"]["id"].startswith("urn:keyop:equipment:")
            assert " " not in epcis["readPoint"]["id"]  # the public name, percent-encoded
        pk.from_obj(copy)  # still a valid packet
