from __future__ import annotations

import json
import re

import pytest
from factories import progress_draft, render_event

from sync import packet as pk
from sync import packet_codec as codec
from sync import topics
from sync.packet_schema import json_schema


def _draft(**over: object) -> pk.Draft:
    return progress_draft(
        good=209,
        scrap=5,
        delta={"good": 10},
        params={"weldCurrent": {"value": 212.5, "uom": "AMP", "class": "restricted"}},
        origin={"protocol": "opcua", "ref": "ns=3;s=W2.Count"},
        **over,
    )


def _render(draft: pk.Draft, seq: int = 18342) -> bytes:
    return render_event(draft, seq=seq)


def test_round_trip_keeps_every_field() -> None:
    raw = _render(_draft())
    packet = codec.decode(raw)
    assert packet.seq == 18342
    assert packet.sequence == "00000000000000018342"
    assert packet.time.endswith("Z") and packet.time.count(".") == 1
    assert packet.data.params is not None
    assert packet.data.params["weldCurrent"].class_ == "restricted"
    again = codec.decode(codec.encode(packet))
    assert again == packet
    assert json.loads(codec.encode(packet)) == json.loads(raw)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e: e.pop("id"), "id: Field required"),
        (lambda e: e.update(source="Plant1/edge"), "source: String should match"),
        (lambda e: e.update(sequence="42"), "sequence: String should match"),
        (lambda e: e.update(type="keyop.operation.exploded"), "unknown event type"),
        (lambda e: e["data"].pop("quantities"), "data.quantities required"),
        (lambda e: e["data"]["quantities"].update(produced=1), "produced (1) must equal"),
        (lambda e: e["data"]["quantities"].update(good=-1), "data.quantities.good"),
        (lambda e: e["data"]["params"]["weldCurrent"].update({"class": "secret"}),
         "data.params.weldCurrent.class"),
        (lambda e: e["data"].pop("equipment"),
         "data.equipment required for type keyop.operation.progress"),
    ],
)
def test_validation_names_the_field(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    event = json.loads(_render(_draft()))
    mutate(event)
    with pytest.raises(pk.PacketError, match=message.replace("(", r"\(").replace(")", r"\)")):
        codec.decode(json.dumps(event))


def test_garbage_and_oversize_are_refused() -> None:
    with pytest.raises(pk.PacketError, match="not valid JSON"):
        codec.decode(b"{nope")
    with pytest.raises(pk.PacketError, match="expected a JSON object"):
        codec.decode(b"[1]")
    with pytest.raises(pk.PacketError, match="exceeds"):
        codec.decode(b" " * (pk.MAX_EVENT_BYTES + 1))


def test_batches_split_into_events() -> None:
    one, two = _render(_draft(), 1), _render(_draft(), 2)
    batch = b"[" + one + b"," + two + b"]"
    events = codec.decode_many(batch)
    assert [codec.from_obj(e).seq for e in events] == [1, 2]
    assert len(codec.decode_many(one)) == 1


def test_schema_names_types_and_conditional_requirements() -> None:
    schema = json_schema()
    assert "keyop.operation.completed" in schema["properties"]["type"]["enum"]
    assert any("quantities" in rule["then"]["properties"]["data"]["required"]
               for rule in schema["allOf"])
    json.dumps(schema)


def test_schema_has_the_hub_events_of_the_supplier_feed() -> None:
    schema = json_schema()
    types = schema["properties"]["type"]["enum"]
    assert {"keyop.assignment.added", "keyop.assignment.removed"} <= set(types)
    defs = schema["$defs"]
    assert set(defs["Estimate"]["properties"]) == {"ratePerHour", "completion", "due"}
    assert set(defs["Assignment"]["properties"]) == {"due"}
    assert defs["Alarm"]["properties"]["status"]["anyOf"][0]["enum"] == [
        "raised", "cleared", "missed"]
    assert schema["properties"]["keyopbackfill"]["const"] is True
    # Every type but the assignments has an equipment; assignments have a work order.
    (rule,) = [r for r in schema["allOf"]
               if r["then"]["properties"]["data"]["required"] == ["equipment"]]
    assert rule["if"]["properties"]["type"]["not"]["pattern"] == r"^keyop\.assignment\."
    assert any(r["then"]["properties"]["data"]["required"] == ["workOrder", "assignment"]
               for r in schema["allOf"])


def test_topics_refuse_wildcards_and_sanitise_orders() -> None:
    assert topics.up_events("edge-07") == "keyop/v1/up/edge-07/events"
    assert topics.sup_events("acme", "WO 42/#") == "keyop/v1/sup/acme/events/WO_42__"
    for bad in ["a+b", "#", "a/b", "", "Upper"]:
        with pytest.raises(topics.TopicError):
            topics.sup_all(bad)
    assert topics.gateway_from_up_topic("keyop/v1/up/edge-07/events") == "edge-07"


def test_decode_refuses_what_the_hub_refuses() -> None:
    raw = _render(_draft()).decode()
    for payload, message in [
        (raw.replace('"value":212.5', '"value":NaN'),
         "data.params.weldCurrent.value: expected a finite number, got NaN"),
        (raw.replace('"good":209', '"good":' + "9" * 5000), "packet: not valid JSON"),
        (raw.replace('"good":209', '"good":"209"'),
         "data.quantities.good: expected a JSON integer, got string"),
        (raw.replace('"sequence":"00000000000000018342"', '"sequence":"00000000000000000000"'),
         "sequence: sequence must be 1..2^63-1"),
        (raw.replace("T11:", "T25:", 1), "time: not a real date-time"),
    ]:
        with pytest.raises(pk.PacketError, match=re.escape(message)):
            codec.decode(payload)


def test_from_obj_ignores_unknown_fields_and_validate_drops_them() -> None:
    event = json.loads(_render(_draft()))
    event["extension"] = {"x": 1}
    event["data"]["quantities"]["bonus"] = 1
    packet = codec.from_obj(event)
    assert packet == codec.decode(_render(_draft()))
    _, canonical, body = codec.validate(event)
    assert "extension" not in canonical and "bonus" not in canonical["data"]["quantities"]
    assert json.loads(body) == json.loads(_render(_draft()))


def test_a_param_without_a_value_round_trips() -> None:
    event = json.loads(_render(progress_draft(params={"p": {"value": None, "class": "public"}})))
    packet = codec.from_obj(event)
    assert codec.decode(codec.encode(packet)) == packet


def test_a_python_caller_gets_a_packet_error_for_what_json_cannot_hold() -> None:
    event = json.loads(_render(_draft()))
    event["data"]["epcis"] = {"when": object()}
    with pytest.raises(pk.PacketError, match="packet: not JSON-serialisable"):
        codec.validate(event)


def test_schema_states_the_limits_and_lets_consumers_ignore_unknown_fields() -> None:
    schema = json_schema()
    text = json.dumps(schema)
    assert '"additionalProperties": false' not in text
    defs = schema["$defs"]
    assert defs["WorkOrder"]["properties"]["id"]["maxLength"] == 128
    assert defs["Quantities"]["properties"]["good"]["maximum"] == 2**63 - 1
    assert defs["Quantities"]["properties"]["uom"]["maxLength"] == 8
    assert schema["properties"]["subject"]["maxLength"] == 512
