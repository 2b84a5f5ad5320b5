"""The hub's ingest validation: strict, bounded, and what it stores is the packet re-serialised.

Each hostile value the hub must refuse is refused with the field named; good packets pass
unchanged; unknown fields are dropped from the canonical body; and a property test mutates one
field of a valid packet to a hostile value and checks that the event is either refused naming
that field, or accepted with a canonical body that re-validates to the same packet and holds no
field docs/packet.md does not define.
"""

from __future__ import annotations

import copy
import json
import math
import re
from typing import Any

import pydantic_core
import pytest
from factories import progress_draft, render_event
from hypothesis import given, settings
from hypothesis import strategies as st

from devstack.workload import render_progress
from hub.validate import decode_events, validate_event
from sync import packet as pk
from sync import packet_codec as codec

PARAMS = {"weldCurrent": {"value": 212.5, "uom": "AMP", "class": "restricted"},
          "cycleTime": {"value": 41, "uom": "SEC", "class": "public"},
          "ok": {"value": True, "class": "partner"}}
BASE: dict[str, Any] = json.loads(render_event(progress_draft(
    params=PARAMS, delta={"good": 10}, customer_orders=["PO-7781", "PO-7782"],
    origin={"protocol": "opcua", "ref": "ns=3;s=W2"},
    materials=[{"use": "Consumed", "materialId": "M-1", "lotId": "L-9", "epcs": ["urn:x"],
                "quantity": 2.5, "uom": "KGM"}],
    parts=[{"serial": "SN-1", "status": "PASS"}])))
ALARM: dict[str, Any] = {**copy.deepcopy(BASE), "type": "keyop.station.alarm",
                         "subject": "plant1/body/line-3/welder-2"}
ALARM["data"]["alarm"] = {"code": "E42", "severity": "warning", "active": True, "text": "hot"}
SCAN: dict[str, Any] = {**copy.deepcopy(BASE), "type": "keyop.station.context"}
SCAN["data"]["scan"] = {"kind": "barcode", "code": "WO-42", "fields": {"10": "LOT9"}}
MATERIAL: dict[str, Any] = {**copy.deepcopy(BASE), "type": "keyop.material.consumed"}
MATERIAL["data"]["epcis"] = {"type": "ObjectEvent", "quantityList": [{"quantity": 2.5}]}
GAP: dict[str, Any] = {**copy.deepcopy(BASE), "type": "keyop.outbox.gap"}
GAP["data"]["gap"] = {"fromSequence": "00000000000000000002",
                      "toSequence": "00000000000000000009", "reason": "bound"}

MAX = 2**63 - 1


def refused(event: Any) -> str:
    with pytest.raises(pk.PacketError) as caught:
        validate_event(event)
    return str(caught.value)


def with_value(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    event = copy.deepcopy(base)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = event
    for step in parents:
        node = node[step]
    node[last] = value
    return event


def model_paths(node: Any, dump: Any, loc: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths in `node` that the packet's full dump (every defined field) does not have;
    free-form `epcis` and `scan.fields` are not looked into."""
    if loc in (("data", "epcis"), ("data", "scan", "fields")):
        return []
    unknown: list[tuple[Any, ...]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(dump, dict) or key not in dump:
                unknown.append((*loc, key))
            else:
                unknown += model_paths(value, dump[key], (*loc, key))
    elif isinstance(node, list) and isinstance(dump, list):
        for index, value in enumerate(node):
            unknown += model_paths(value, dump[index], (*loc, index))
    return unknown


def assert_canonical(packet: pk.Packet, canonical: dict[str, Any], body: str) -> None:
    """The body is the canonical dict's compact JSON, re-validates to the same packet (and
    the same body), and holds only fields docs/packet.md defines."""
    assert body == pydantic_core.to_json(canonical).decode()
    again = validate_event(pydantic_core.from_json(body, allow_inf_nan=False))
    assert again[0] == packet and again[2] == body
    full = packet.model_dump(mode="json", by_alias=True)
    assert model_paths(canonical, full) == []


# -- good packets ---------------------------------------------------------------------------


@pytest.mark.parametrize("event", [BASE, ALARM, SCAN, MATERIAL, GAP],
                         ids=["progress", "alarm", "scan", "material", "gap"])
def test_good_packets_pass_unchanged(event: dict[str, Any]) -> None:
    raw = pydantic_core.to_json(event)
    [obj] = decode_events(raw)
    packet, canonical, body = validate_event(obj)
    assert canonical == event
    assert body.encode() == raw
    assert_canonical(packet, canonical, body)
    assert packet == codec.decode(raw)


@pytest.mark.parametrize("seq", [1, 2, 49, 50, 1000])
def test_benchmark_packets_are_accepted_unchanged(seq: int) -> None:
    raw = render_progress("gw-1", seq, 50)
    [obj] = decode_events(raw)
    packet, _, body = validate_event(obj)
    assert body.encode() == raw  # the edge already renders compact JSON
    assert packet == codec.decode(raw)


def test_non_ascii_is_kept_in_the_body() -> None:
    event = with_value(BASE, "data.operation.name", "Schweißen 焊接")
    _, _, body = validate_event(event)
    assert "Schweißen 焊接" in body


def test_the_limits_themselves_are_accepted() -> None:
    event = with_value(BASE, "sequence", f"{MAX:020d}")
    event["data"]["quantities"].update(planned=MAX, good=MAX, scrap=0, produced=MAX)
    event["data"]["delta"] = {"good": MAX, "scrap": -MAX - 1}
    event["data"]["workOrder"]["id"] = "W" * 128
    event["data"]["quantities"]["uom"] = "U" * 8
    event["subject"] = "s" * 512
    event["time"] = "0001-01-01T00:00:00.000+14:00"
    event["recordedtime"] = "9999-12-31T23:59:59.999999999-14:00"
    packet, canonical, body = validate_event(event)
    assert packet.seq == MAX
    assert math.isfinite(pk.parse_time(packet.time)) and math.isfinite(
        pk.parse_time(packet.recordedtime))
    assert_canonical(packet, canonical, body)


# -- hostile values, each refused with the field named ---------------------------------------


@pytest.mark.parametrize("field", ["time", "recordedtime"])
@pytest.mark.parametrize("text", [
    "2026-13-01T00:00:00.000Z", "2026-11-32T00:00:00.000Z", "2026-11-21T25:00:00.000Z",
    "1970-02-30T00:00:00.000Z", "2026-11-21T08:60:00Z", "0000-01-01T00:00:00Z",
    "2026-02-29T00:00:00.000Z",
])
def test_impossible_dates_are_refused(field: str, text: str) -> None:
    assert refused(with_value(BASE, field, text)).startswith(f"{field}: not a real date-time")


@pytest.mark.parametrize("text", ["2026-11-21T08:14:03.120+24:00", "2026-11-21T08:14:03+05:99",
                                  "2026-11-21T08:14:03"])
def test_offsets_beyond_a_day_and_missing_offsets_do_not_match(text: str) -> None:
    assert refused(with_value(BASE, "time", text)).startswith("time: String should match")


@pytest.mark.parametrize("value", ["00000000000000000000", "09223372036854775808",
                                   "99999999999999999999", "18446744073709551615"])
def test_sequence_out_of_range_is_refused(value: str) -> None:
    assert refused(with_value(BASE, "sequence", value)) == (
        "sequence: sequence must be 1..2^63-1 (sequences start at 1)")
    assert refused(with_value(GAP, "data.gap.toSequence", value)).startswith(
        "data.gap.toSequence: sequence must be")


@pytest.mark.parametrize("path", ["data.quantities.good", "data.quantities.scrap",
                                  "data.quantities.rework", "data.quantities.produced",
                                  "data.quantities.planned", "data.delta.good"])
@pytest.mark.parametrize("value", [2**63, 2**64 - 1, 10**40])
def test_integers_beyond_bigint_are_refused(path: str, value: int) -> None:
    message = refused(with_value(BASE, path, value))
    assert message == f"{path}: Input should be less than or equal to {MAX}"


def test_a_sum_beyond_bigint_is_refused_by_produced() -> None:
    event = copy.deepcopy(BASE)
    event["data"]["quantities"].update(good=2**62, scrap=2**62, produced=2**63)
    assert refused(event).startswith("data.quantities.produced: Input should be less than")


@pytest.mark.parametrize("path", ["data.quantities.good", "data.quantities.scrap",
                                  "data.quantities.rework", "data.quantities.produced",
                                  "data.quantities.planned"])
def test_negative_counts_are_refused(path: str) -> None:
    assert refused(with_value(BASE, path, -1)) == (
        f"{path}: Input should be greater than or equal to 0")


def test_delta_below_bigint_is_refused() -> None:
    assert refused(with_value(BASE, "data.delta.scrap", -(2**63) - 1)).startswith(
        "data.delta.scrap: Input should be greater than or equal to")


@pytest.mark.parametrize(("base", "path", "limit"), [
    (BASE, "data.workOrder.id", 128), (BASE, "data.operation.id", 128),
    (BASE, "data.equipment.path", 512), (BASE, "subject", 512),
    (BASE, "data.quantities.uom", 8), (BASE, "type", 64), (BASE, "data.runId", 512),
    (BASE, "data.workOrder.erpOrder", 128), (BASE, "data.workOrder.customerOrders.0", 128),
    (BASE, "data.operation.name", 128), (BASE, "data.equipment.level", 128),
    (BASE, "data.params.weldCurrent.uom", 16), (BASE, "data.materials.0.lotId", 128),
    (BASE, "data.materials.0.epcs.0", 512), (BASE, "data.parts.0.serial", 128),
    (BASE, "data.origin.ref", 1024), (BASE, "data.origin.protocol", 32),
    (ALARM, "data.alarm.code", 128), (ALARM, "data.alarm.text", 1024),
    (ALARM, "data.alarm.severity", 128), (SCAN, "data.scan.code", 4096),
    (GAP, "data.gap.reason", 1024),
])
def test_strings_longer_than_their_limit_are_refused(base: dict[str, Any], path: str,
                                                     limit: int) -> None:
    if path != "type":  # (no type is that long)
        validate_event(with_value(base, path, "x" * limit))  # the limit itself is fine
    message = refused(with_value(base, path, "x" * (limit + 1)))
    assert message == f"{path}: String should have at most {limit} characters"


def test_reason_text_and_param_text_are_bounded() -> None:
    event = with_value(BASE, "data.state.reason", {"code": "jam", "text": "x" * 1025})
    assert refused(event) == "data.state.reason.text: String should have at most 1024 characters"
    event = with_value(BASE, "data.params.weldCurrent.value", "x" * 1025)
    assert refused(event) == "data.params.weldCurrent.value: text longer than 1024 characters"
    event = with_value(BASE, "data.params", {"p" * 129: {"value": 1, "class": "public"}})
    assert refused(event).startswith(f"data.params.{'p' * 129}.[key]: String should have")
    assert refused(with_value(BASE, "source", "plant1/" + "e" * 65)).startswith(
        "source: String should match pattern")


@pytest.mark.parametrize(("path", "items", "limit"), [
    ("data.workOrder.customerOrders", "PO-1", 64),
    ("data.parts", {"serial": "SN", "status": "PASS"}, 1000),
    ("data.params", None, 256),
])
def test_lists_and_maps_have_a_bounded_count(path: str, items: Any, limit: int) -> None:
    def many(n: int) -> Any:
        if items is None:
            return {f"p{i}": {"value": i, "class": "public"} for i in range(n)}
        return [items] * n

    validate_event(with_value(BASE, path, many(limit)))
    assert refused(with_value(BASE, path, many(limit + 1))).startswith(f"{path}: ")


def test_nan_and_infinity_tokens_refuse_the_event_not_the_message() -> None:
    # Python's json module writes them for non-finite floats: the event that holds one is
    # refused with the field named; its batch siblings and its identity are still read.
    raw = pydantic_core.to_json(BASE).decode()
    for token, kind in (("NaN", "NaN"), ("Infinity", "Infinity"), ("-Infinity", "Infinity")):
        bad = raw.replace('"value":212.5', f'"value":{token}')
        spoilt = raw.replace('"good":209', f'"good":{token}')
        objects = decode_events(f"[{raw},{bad},{spoilt}]".encode())
        validate_event(objects[0])
        assert refused(objects[1]) == (
            f"data.params.weldCurrent.value: expected a finite number, got {kind}")
        assert refused(objects[2]) == f"data.quantities.good: expected a JSON integer, got {kind}"
        assert objects[1]["sequence"] == BASE["sequence"]
        with pytest.raises(pk.PacketError, match=r"data\.params\.weldCurrent\.value: expected a"):
            codec.decode(bad)


@pytest.mark.parametrize("path", ["data.params.weldCurrent.value", "data.materials.0.quantity"])
def test_overflowing_floats_are_refused_in_float_fields(path: str) -> None:
    # 1e400 is valid JSON that parses to infinity.
    payload = pydantic_core.to_json(with_value(BASE, path, 123.25)).replace(b"123.25", b"1e400")
    [obj] = decode_events(payload)
    assert refused(obj).startswith(f"{path}: expected a finite number")
    for value in (math.nan, math.inf, -math.inf):
        assert refused(with_value(BASE, path, value)).startswith(f"{path}: expected a finite")


def test_non_finite_numbers_in_free_form_epcis_are_refused() -> None:
    payload = pydantic_core.to_json(MATERIAL).replace(b'"quantity":2.5}]}', b'"quantity":1e400}]}')
    [obj] = decode_events(payload)
    assert refused(obj) == (
        "data.epcis.quantityList.0.quantity: expected a finite number, got Infinity")
    for value, kind in ((-math.inf, "Infinity"), (math.nan, "NaN")):
        event = with_value(MATERIAL, "data.epcis.nested", {"x": [1, value]})
        assert refused(event) == f"data.epcis.nested.x.1: expected a finite number, got {kind}"
        payload = pydantic_core.to_json(event)  # as the NaN / -Infinity token
        assert refused(decode_events(payload)[0]) == refused(event)


@pytest.mark.parametrize(("base", "path"), [
    (BASE, "data.runId"), (BASE, "data.workOrder.id"), (BASE, "data.params.weldCurrent.value"),
    (BASE, "data.origin.ref"), (SCAN, "data.scan.fields.10"), (MATERIAL, "data.epcis.type"),
])
def test_nul_characters_are_refused_with_the_field_named(base: dict[str, Any], path: str) -> None:
    payload = pydantic_core.to_json(with_value(base, path, "a\x00b"))
    assert b"\\u0000" in payload
    [obj] = decode_events(payload)
    assert refused(obj) == f"{path}: a string holds a NUL character (\\u0000)"


def test_nul_in_a_name_is_refused() -> None:
    event = with_value(SCAN, "data.scan.fields", {"a\x00": "1"})
    assert refused(event) == "data.scan.fields.a\x00: a name holds a NUL character (\\u0000)"


def test_an_escaped_backslash_before_u0000_is_no_nul() -> None:
    event = with_value(BASE, "data.origin.ref", "C:\\u0000")  # a backslash, then "u0000"
    _, canonical, body = validate_event(event)
    assert "\\\\u0000" in body and canonical["data"]["origin"]["ref"] == "C:\\u0000"


@pytest.mark.parametrize(("path", "value", "kind", "got"), [
    ("data.quantities.good", "5", "integer", "string"),
    ("data.quantities.good", True, "integer", "boolean"),
    ("data.quantities.good", 5.0, "integer", "number"),
    ("data.quantities.planned", "500", "integer", "string"),
    ("data.delta.good", 1.5, "integer", "number"),
    ("data.workOrder.id", 42, "string", "integer"),
    ("data.runId", ["r"], "string", "array"),
    ("data.alarm.active", "true", "boolean", "string"),
    ("data.alarm.active", 1, "boolean", "integer"),
    ("data.materials.0.quantity", "2.5", "number", "string"),
    ("data.workOrder.customerOrders", "PO-1", "array", "string"),
    ("data.workOrder", "WO-42", "object", "string"),
    ("data.epcis", [], "object", "array"),
])
def test_no_coercion(path: str, value: Any, kind: str, got: str) -> None:
    base = ALARM if path.startswith("data.alarm") else BASE
    assert refused(with_value(base, path, value)) == f"{path}: expected a JSON {kind}, got {got}"


def test_a_json_integer_is_a_fine_float() -> None:
    packet, _, _ = validate_event(with_value(BASE, "data.materials.0.quantity", 3))
    assert packet.data.materials is not None and packet.data.materials[0].quantity == 3.0


def test_param_values_of_other_kinds_are_refused() -> None:
    for value, message in [([1], "expected a JSON boolean, integer, number, string or null, "
                                 "got array"),
                           (2**63, "integer out of range (-2^63..2^63-1)")]:
        event = with_value(BASE, "data.params.cycleTime.value", value)
        assert refused(event) == f"data.params.cycleTime.value: {message}"


def test_many_errors_make_one_short_message() -> None:
    event = with_value(BASE, "data.parts", [{"serial": 1, "status": "PASS"}] * 1000)
    message = refused(event)
    assert message.endswith("; and 990 more") and len(message) < 1000


# -- unknown fields --------------------------------------------------------------------------


def test_unknown_fields_are_dropped_at_every_level() -> None:
    event = copy.deepcopy(BASE)
    event["extension"] = "x" * 100
    event["data"]["unknownField"] = {"deep": [1, 2]}
    event["data"]["quantities"]["bonus"] = 7
    event["data"]["params"]["weldCurrent"]["secret"] = "s"
    event["data"]["materials"][0]["extra"] = None
    event["data"]["state"]["reason"] = {"code": "jam", "note": "n"}
    packet, canonical, body = validate_event(event)
    assert packet == validate_event(with_value(BASE, "data.state.reason", {"code": "jam"}))[0]
    for word in ("extension", "unknownField", "bonus", "secret", "extra", "note"):
        assert word not in body
    assert_canonical(packet, canonical, body)
    # The caller's object is left as it was.
    assert event["data"]["quantities"]["bonus"] == 7


def test_class_is_the_only_name_of_a_params_class() -> None:
    event = with_value(BASE, "data.params.ok", {"value": True, "class_": "public"})
    assert refused(event) == "data.params.ok.class: Field required"


def test_an_unknown_field_does_not_hide_a_real_problem() -> None:
    event = with_value(BASE, "data.quantities.good", "5")
    event["data"]["quantities"]["bonus"] = 7
    assert refused(event) == "data.quantities.good: expected a JSON integer, got string"
    event = with_value(BASE, "data.quantities.produced", 1)
    event["extension"] = 1
    assert refused(event).startswith("data.quantities: produced (1) must equal")


def test_free_form_fields_stay_as_they_are() -> None:
    event = with_value(MATERIAL, "data.epcis", {"any": {"thing": [None, 1, "x"]}})
    event = with_value(event, "data.scan", {"kind": "rfid", "code": "c", "fields": {"k": "v"}})
    _, canonical, _ = validate_event(event)
    assert canonical["data"]["epcis"] == {"any": {"thing": [None, 1, "x"]}}
    assert canonical["data"]["scan"]["fields"] == {"k": "v"}


# -- structure -------------------------------------------------------------------------------


@pytest.mark.parametrize("obj", [[1], "x", 3, None, [BASE]])
def test_a_non_object_event_is_refused_by_name(obj: Any) -> None:
    with pytest.raises(pk.PacketError, match="packet: expected a JSON object"):
        validate_event(obj)


def test_batch_events_are_validated_one_by_one() -> None:
    bad = copy.deepcopy(BASE)
    bad["data"]["quantities"]["produced"] = 1
    objects = decode_events(pydantic_core.to_json([BASE, bad, BASE]))
    validate_event(objects[0])
    validate_event(objects[2])
    with pytest.raises(pk.PacketError, match=r"data\.quantities: produced \(1\) must equal"):
        validate_event(objects[1])


@pytest.mark.parametrize(
    ("type_", "drop", "message"),
    [
        ("keyop.operation.started", ["workOrder", "runId"],
         "data.workOrder, data.runId required for type keyop.operation.started"),
        ("keyop.station.alarm", [], "data.alarm required for type keyop.station.alarm"),
        ("keyop.material.consumed", [], "data.epcis required for type keyop.material.consumed"),
        ("keyop.outbox.gap", [], "data.gap required for type keyop.outbox.gap"),
        ("keyop.operation.bogus", [], "type: unknown event type 'keyop.operation.bogus'"),
    ],
)
def test_required_data_messages(type_: str, drop: list[str], message: str) -> None:
    event = copy.deepcopy(BASE)
    event["type"] = type_
    for name in drop:
        del event["data"][name]
    assert refused(event) == f"packet: {message}"


def test_garbage_payloads_are_refused() -> None:
    for payload in (b"{nope", b"[" + b"9" * 5000 + b"]", b'"\\ud800"'):
        with pytest.raises(pk.PacketError, match="payload: not valid JSON"):
            decode_events(payload)
    with pytest.raises(pk.PacketError, match="exceeds the 65536 cap"):
        decode_events(b" " * (pk.MAX_EVENT_BYTES + 1))


# -- property: one field made hostile ---------------------------------------------------------


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


BASES = {"progress": BASE, "alarm": ALARM, "scan": SCAN, "material": MATERIAL, "gap": GAP}
TARGETS = sorted({(name, path) for name, base in BASES.items() for path in _paths(base)},
                 key=repr)


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        node = node[step]
    return node


# Model objects, where a key docs/packet.md does not define may be added (not the free-form ones,
# nor `params`, where a new key is a new parameter).
OBJECTS = sorted({(name, path) for name, path in TARGETS
                  if isinstance(_get(BASES[name], path), dict)
                  and not {"params", "epcis", "fields"} & {path[-1]}
                  and "epcis" not in path and "fields" not in path}, key=repr)
OBJECTS += [(name, ()) for name in BASES]

hostile = st.one_of(
    st.sampled_from([None, True, False, 0, 5, 5.0, 2.5, "5", "", [], {}, ["x"], {"k": "v"}]),
    st.sampled_from([-1, 2**63, -(2**63) - 1, 2**64 - 1, 10**30, MAX]),
    st.sampled_from(["2026-13-01T00:00:00.000Z", "2026-02-30T00:00:00.000Z",
                     "2026-11-21T25:00:00.000Z", "1970-02-30T00:00:00.000Z",
                     "00000000000000000000", "99999999999999999999", "a\x00b"]),
    st.integers(65, 5000).map(lambda n: "x" * n),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(map(str, path))


def _names_the_field(message: str, path: tuple[Any, ...]) -> bool:
    """Some error of the message is at `path`, inside it, or at the object that holds it."""
    target = _dotted(path)
    for part in message.split("; "):
        where = part.split(": ", 1)[0]
        if where == "packet":  # model-level rules name their fields in the text
            where = part.split(": ")[1].split(" ")[0].split(",")[0]
        if where == target or where.startswith(target + ".") or target.startswith(where + "."):
            return True
    return False


def _set(event: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node: Any = event
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value


def check_one_mutation(base: dict[str, Any], path: tuple[Any, ...], value: Any,
                       unknown: bool) -> None:
    event = copy.deepcopy(base)
    if unknown:
        key = "x-unknown-field"
        _set(event, (*path, key), value)
    else:
        _set(event, path, value)
    try:
        packet, canonical, body = validate_event(event)
    except pk.PacketError as error:
        assert not unknown, f"an unknown field made it refused: {error}"
        assert _names_the_field(str(error), path), (str(error), path)
    else:
        assert_canonical(packet, canonical, body)
        if unknown:
            assert packet == validate_event(base)[0]
    # The same event as the hub gets it, from a payload Python's json module wrote (non-finite
    # numbers as NaN / Infinity tokens), and once more with infinities as overflowing literals.
    text = json.dumps(event, ensure_ascii=False)
    overflowing = re.sub(r"(?<![\w.])(-?)Infinity\b", r"\g<1>1e400", text)
    for payload in {text, overflowing}:
        [obj] = decode_events(payload.encode())
        try:
            packet, canonical, body = validate_event(obj)
        except pk.PacketError as error:
            assert not unknown and _names_the_field(str(error), path), (str(error), path)
        else:
            assert_canonical(packet, canonical, body)


@settings(max_examples=1500, deadline=None)
@given(target=st.sampled_from(TARGETS), value=hostile)
def test_one_hostile_field_is_refused_by_name_or_stored_canonical(
        target: tuple[str, tuple[Any, ...]], value: Any) -> None:
    name, path = target
    check_one_mutation(BASES[name], path, value, unknown=False)


@settings(max_examples=300, deadline=None)
@given(target=st.sampled_from(OBJECTS), value=hostile)
def test_an_unknown_field_anywhere_is_dropped(target: tuple[str, tuple[Any, ...]],
                                             value: Any) -> None:
    name, path = target
    check_one_mutation(BASES[name], path, value, unknown=True)


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: f"{t[0]}:{_dotted(t[1])}")
def test_every_field_with_every_kind_of_hostile_value(target: tuple[str, tuple[Any, ...]]
                                                      ) -> None:
    """Exhaustive over the packets' fields: each set to one value of each hostile kind."""
    name, path = target
    for value in [None, True, 5.0, "5", [], {}, -1, 2**63, "2026-02-30T00:00:00.000Z",
                  "x" * 5000, "a\x00b", math.nan, math.inf]:
        check_one_mutation(BASES[name], path, value, unknown=False)
