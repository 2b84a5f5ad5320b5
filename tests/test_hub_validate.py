"""Property: the hub's ingest validation accepts and rejects exactly what the original route did
(re-encode each event compactly, validate that text, ask `from_obj` for the message), with
equal packets, bodies and messages, for thousands of generated valid and broken events."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pydantic_core
import pytest
from factories import progress_draft, render_event
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from hub.validate import decode_events, validate_event
from sync import packet as pk


def reference(obj: Any) -> tuple[pk.Packet, str]:
    """The route validate_event took before it validated the dict itself."""
    if not isinstance(obj, dict):
        pk.from_obj(obj)
    body = pydantic_core.to_json(obj)
    try:
        packet = pk.Packet.model_validate_json(body)
    except ValidationError:
        packet = pk.from_obj(obj)
    return packet, body.decode("utf-8")


def outcome(validate: Any, obj: Any) -> tuple[str, Any]:
    """What a route made of `obj`. The packet is compared by its repr, which tells 1 from 1.0
    and -0.0 from 0.0, and lets NaN equal itself."""
    try:
        packet, body = validate(obj)
    except pk.PacketError as error:
        return "rejected", str(error)
    assert type(packet) is pk.Packet
    return "accepted", (repr(packet), body)


def assert_same(obj: Any) -> None:
    got, want = outcome(validate_event, obj), outcome(reference, obj)
    assert got == want, json.dumps(obj, default=repr)[:400]
    if got[0] == "accepted":
        # The plain validator agrees too.
        assert got[1][0] == repr(pk.from_obj(obj))


PARAMS = {"weldCurrent": {"value": 212.5, "uom": "AMP", "class": "restricted"},
          "cycleTime": {"value": 41, "uom": "SEC", "class": "public"},
          "ok": {"value": True, "class": "partner"}}
BASE: dict[str, Any] = json.loads(render_event(progress_draft(
    params=PARAMS, delta={"good": 10}, origin={"protocol": "opcua", "ref": "ns=3;s=W2"})))

# Values of every JSON kind, and the ones that sit on a validation edge.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.integers(), st.floats(),
    st.sampled_from([0.0, -0.0, 1.0, 2.5, 1e16, 1e-7, 1e400, -1e400, math.nan, 2**70]),
    st.text(max_size=6),
    st.sampled_from(["", "1", "1.0", "true", "NaN", "Running", "public", "C62", "+08:00",
                     "01JDA5Q1Y4S7M2R8K3VZC6TB9E", "plant1/edge-07", "00000000000000000001",
                     "2026-11-21T08:14:03.120Z", "keyop.station.alarm", "keyop.outbox.gap",
                     "keyop.operation.started", "keyop.nope", "\u00e9\u4e2d", "a\u0000b"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(["id", "value", "class", "x"]),
                                            inner, max_size=3)),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


PATHS = _paths(BASE)
# Keys a mutation may add where they are missing (optional and type-required fields).
NEW_KEYS = [("data", "alarm"), ("data", "scan"), ("data", "gap"), ("data", "epcis"),
            ("data", "materials"), ("data", "parts"), ("data", "state", "reason"),
            ("data", "quantities", "planned"), ("data", "unknownField"), ("extension",)]

mutation = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(PATHS + NEW_KEYS), json_values),
    st.tuples(st.just("drop"), st.sampled_from(PATHS), st.none()),
)


def mutate(event: dict[str, Any], how: str, path: tuple[Any, ...], value: Any) -> None:
    parent: Any = event
    for step in path[:-1]:
        if (isinstance(parent, dict) and step in parent) or (
                isinstance(parent, list) and isinstance(step, int) and step < len(parent)):
            parent = parent[step]
        else:
            return  # an earlier mutation removed the way there
    last = path[-1]
    if isinstance(parent, dict):
        if how == "set":
            parent[last] = value
        else:
            parent.pop(last, None)
    elif isinstance(parent, list) and isinstance(last, int) and last < len(parent):
        if how == "set":
            parent[last] = value
        else:
            del parent[last]


@settings(max_examples=3000, deadline=None)
@given(mutations=st.lists(mutation, max_size=3),
       type_=st.sampled_from(sorted(pk.EVENT_TYPES)))
def test_same_outcome_as_the_original_route(
        mutations: list[tuple[str, tuple[Any, ...], Any]], type_: str) -> None:
    event = copy.deepcopy(BASE)
    event["type"] = type_
    for how, path, value in mutations:
        mutate(event, how, path, value)
    assert_same(event)
    # The same event as the hub sees it: parsed from its payload (non-finite floats included).
    payload = pydantic_core.to_json(event)
    for obj in decode_events(payload):
        assert_same(obj)


EDGE_VALUES: list[Any] = [
    None, True, False, 0, 1, -1, 2**70, 0.0, -0.0, 1.0, 2.5, 1e16, 1e-7, math.nan, math.inf,
    -math.inf,
    "", "1", "1.0", "true", "NaN", "Running", "public", "C62", "+08:00", "a\u0000b", [], {},
    ["PO-1"], {"code": "E1"}, {"value": 1, "class": "public"},
]


@pytest.mark.parametrize("path", PATHS + NEW_KEYS, ids=lambda p: ".".join(map(str, p)))
def test_every_field_with_edge_values_same_outcome(path: tuple[Any, ...]) -> None:
    """Exhaustive over the typical packet's fields: each set to each edge value, or dropped."""
    for how, value in [("drop", None)] + [("set", v) for v in EDGE_VALUES]:
        event = copy.deepcopy(BASE)
        mutate(event, how, path, value)
        assert_same(event)
        for obj in decode_events(pydantic_core.to_json(event)):
            assert_same(obj)


@pytest.mark.parametrize("seq", range(1, 60))
def test_benchmark_packets_are_accepted_unchanged(seq: int) -> None:
    from gateway.bench_hub import _render

    raw = _render("gw-1", seq, 50)
    [obj] = decode_events(raw)
    packet, body = validate_event(obj)
    assert outcome(validate_event, obj) == outcome(reference, obj)
    assert body.encode() == raw  # the edge already renders compact JSON
    assert packet == pk.decode(raw)


@pytest.mark.parametrize("obj", [[1], "x", 3, None, [BASE]])
def test_a_non_object_event_is_refused_by_name(obj: Any) -> None:
    with pytest.raises(pk.PacketError, match="packet: expected a JSON object"):
        validate_event(obj)


def test_batch_events_are_validated_one_by_one() -> None:
    bad = copy.deepcopy(BASE)
    bad["data"]["quantities"]["produced"] = 1
    objects = decode_events(pydantic_core.to_json([BASE, bad, BASE]))
    assert [outcome(validate_event, o)[0] for o in objects] == ["accepted", "rejected",
                                                                 "accepted"]
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
def test_required_data_messages_are_unchanged(type_: str, drop: list[str], message: str) -> None:
    event = copy.deepcopy(BASE)
    event["type"] = type_
    for name in drop:
        del event["data"][name]
    with pytest.raises(pk.PacketError) as caught:
        validate_event(event)
    assert str(caught.value) == f"packet: {message}"
    assert_same(event)
