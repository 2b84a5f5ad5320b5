"""The real hub (SQLite and PostgreSQL, a real Mosquitto) under generated hostile packets.

Each round, a good gateway sends good packets while a hostile one sends packets in which one
field is replaced by a hostile value (wrong type, out of range, impossible date, huge string,
NaN or Infinity, NUL) or an unknown field is added. Whatever comes: the hub stays up, every good
packet is stored exactly once and acknowledged, every hostile one is one dead letter whose
reason names the field, an unknown field is dropped from what is stored, and no supplier ever
receives a field docs/packet.md does not define.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import sqlalchemy as sa
from hubkit import Client, RunningHub, make_event, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ulid import ULID

from devstack.mosquitto import PrivateBroker
from hub.config import parse_config
from hub.schema import packets
from sync import topics

GOOD, BAD = "edge-good", "edge-bad"
UNKNOWN = "zzUnknown"

# Envelope and data fields docs/packet.md defines: nothing else may reach a supplier.
ENVELOPE = {"specversion", "id", "source", "type", "subject", "time", "recordedtime", "sequence",
            "sourceepoch", "datacontenttype", "dataschema", "data"}
DATA = {"kopVersion", "workOrder", "operation", "runId", "equipment", "state", "quantities",
        "delta", "materials", "parts", "alarm", "params", "epcis", "scan", "gap", "tzOffset",
        "timeQuality", "origin"}

# path -> (kind, required): what may be put there to make the packet invalid for sure.
FIELDS: dict[tuple[str, ...], tuple[str, bool]] = {
    ("id",): ("ulid", True),
    ("source",): ("source", True),
    ("type",): ("enum", True),
    ("subject",): ("text512", True),
    ("time",): ("time", True),
    ("recordedtime",): ("time", True),
    ("sequence",): ("sequence", True),
    ("specversion",): ("enum", True),
    ("data", "workOrder", "id"): ("text128", True),
    ("data", "operation", "id"): ("text128", True),
    ("data", "equipment", "path"): ("text512", True),
    ("data", "state", "value"): ("enum", True),
    ("data", "quantities", "good"): ("count", True),
    ("data", "quantities", "scrap"): ("count", True),
    ("data", "quantities", "produced"): ("count", True),
    ("data", "quantities", "planned"): ("count", False),
    ("data", "quantities", "uom"): ("text8", False),
    ("data", "tzOffset"): ("enum", True),
    ("data", "timeQuality"): ("enum", True),
}

_NAN = float("nan")
_ANY_WRONG = [[], {}, {"a": 1}, [1, 2]]
HOSTILE: dict[str, list[Any]] = {
    "count": ["5", True, 5.0, -1, 2**63, 2**64 - 1, 10**30, _NAN, math.inf, -math.inf, "x",
              *_ANY_WRONG],
    "ulid": [12345, True, "0" * 27, "not-a-ulid", "", *_ANY_WRONG],
    "source": [7, "Plant1/EDGE", "plant1/edge-bad/extra", "x" * 300, *_ANY_WRONG],
    "sequence": ["1", 1, "99999999999999999999", "-0000000000000000001", "", *_ANY_WRONG],
    "time": ["2026-13-45T25:61:61.000Z", "2026-02-30T10:00:00.000Z", "2026-11-21T24:00:00Z",
             "yesterday", 1_795_000_000, _NAN, *_ANY_WRONG],
    "enum": ["Bogus", 1, True, _NAN, "x" * 5000, *_ANY_WRONG],
    "text8": [12, True, "x" * 9, _NAN, *_ANY_WRONG],
    "text128": [12, True, "x" * 129, "WO\u00001", _NAN, "W" * 20_000, *_ANY_WRONG],
    "text512": [12, True, "x" * 513, "a\u0000b", math.inf, "p" * 20_000, *_ANY_WRONG],
}


@st.composite
def mutation(draw: st.DrawFn) -> tuple[tuple[str, ...], Any]:
    """One change to a valid packet: (path, hostile value), or (path + UNKNOWN, value)."""
    if draw(st.integers(0, 5)) == 0:
        where = draw(st.sampled_from([(), ("data",), ("data", "quantities"),
                                      ("data", "equipment"), ("data", "workOrder")]))
        return (*where, UNKNOWN), draw(st.sampled_from([1, "x", {"deep": [1, 2]}, None]))
    path = draw(st.sampled_from(sorted(FIELDS)))
    kind, required = FIELDS[path]
    values = HOSTILE[kind] + ([None] if required else [])
    return path, draw(st.sampled_from(values))


def hostile_packet(path: tuple[str, ...], value: Any) -> tuple[bytes, str]:
    """A valid packet of the hostile gateway (its own epoch, first in the JSON so the dead
    letter's prefix shows it) with one change; and that epoch."""
    epoch = str(ULID())
    obj = json.loads(make_event(1, source=f"plant1/{BAD}", epoch=epoch))
    obj["id"] = str(ULID())
    where = obj
    for part in path[:-1]:
        where = where[part]
    where[path[-1]] = value
    ordered = {"sourceepoch": obj.pop("sourceepoch"), **obj}
    return json.dumps(ordered, allow_nan=True).encode(), epoch


def hub_yaml(broker: PrivateBroker, db_url: str) -> str:
    return f"""
hub: {{id: hub, database: "{db_url}"}}
api: {{enabled: false}}
alerts: {{enabled: false}}
mqtt: {{host: {broker.host}, port: {broker.port}, client_id: keyop-hub-hostile, share_group: h}}
gateways:
  {GOOD}: {{site: plant1}}
  {BAD}: {{site: plant1}}
suppliers:
  acme: {{partner_params: true}}
routes:
  - {{supplier: acme, types: ["*"]}}
"""


def leaked_fields(event: dict[str, Any]) -> set[str]:
    """Fields of a supplier's copy that docs/packet.md does not define."""
    found = set(event) - ENVELOPE
    data = event.get("data") or {}
    found |= {f"data.{k}" for k in set(data) - DATA}
    if UNKNOWN in json.dumps(event):
        found.add(UNKNOWN)
    return found


@pytest.mark.timeout(240)
def test_hostile_packets_never_stop_or_mislead_the_hub(broker: PrivateBroker,
                                                       hub_db_url: str) -> None:
    hub = RunningHub(parse_config(hub_yaml(broker, hub_db_url)), broker)
    good_edge = Client(broker, topics.down_ack(GOOD))
    bad_edge = Client(broker, topics.down_ack(BAD))
    acme = Client(broker, topics.sup_all("acme"))
    service = hub.service
    store = service.store
    assert store is not None
    sent_good = [0]
    published = [0]

    def wait_handled() -> None:
        wait_until(lambda: service.messages == published[0], "every message handled", 30)

    @settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(mutation(), min_size=1, max_size=4))
    def one_round(mutations: list[tuple[tuple[str, ...], Any]]) -> None:
        for path, value in mutations:
            sent_good[0] += 1
            good_edge.publish(topics.up_events(GOOD),
                              make_event(sent_good[0], source=f"plant1/{GOOD}"))
            letters_before = len(store.dead_letter_rows())
            payload, epoch = hostile_packet(path, value)
            bad_edge.publish(topics.up_events(BAD), payload)
            published[0] += 2
            wait_handled()
            letters = store.dead_letter_rows()[letters_before:]
            with store.engine.connect() as conn:
                rows = conn.execute(sa.select(packets.c.body)
                                    .where(packets.c.epoch == epoch)).scalars().all()
            if path[-1] == UNKNOWN:
                # Not hostile: taken, stored once, without the unknown field.
                assert letters == [] and len(rows) == 1, (path, value)
                assert UNKNOWN not in rows[0]
                continue
            assert rows == [], f"stored a packet with {'.'.join(path)} = {value!r}"
            (letter,) = letters
            assert path[-1] in letter.reason, (path, value, letter.reason)
            assert epoch.encode() in letter.payload

    try:
        one_round()
        # The good gateway: everything stored once, in order, and acknowledged.
        wait_until(lambda: any(int(p["sequence"]) == sent_good[0]
                               for p in good_edge.payloads()), "ack of the last good packet")
        with store.engine.connect() as conn:
            seqs = conn.execute(sa.select(packets.c.seq).where(
                packets.c.source == f"plant1/{GOOD}").order_by(packets.c.seq)).scalars().all()
        assert seqs == list(range(1, sent_good[0] + 1))
        # What acme received: the good packets and the accepted ones, nothing undefined.
        wait_until(lambda: service.fanout is not None and service.fanout.packets
                   >= store.count_packets(), "fan-out caught up", 30)
        events = [e for e in acme.payloads("keyop/v1/sup/acme/events/") if "specversion" in e]
        assert events, "acme received nothing"
        leaks = {field for event in events for field in leaked_fields(event)}
        assert leaks == set()
    finally:
        for client in (good_edge, bad_edge, acme):
            client.close()
        hub.close()
