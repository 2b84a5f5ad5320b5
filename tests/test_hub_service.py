"""The hub end to end with a real Mosquitto: ingest, dedupe, acks, fan-out, dead letters,
restart. The hub runs in a thread with its own event loop; clients are plain paho."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CONTENT_TYPE_LATEST
from test_hub_store import EPOCH, SOURCE, make_event

from devstack.mosquitto import PrivateBroker
from hub.config import HubConfig, parse_config
from hub.fanout import Sent, settle_cursors
from hub.feed import Feed
from hub.mqtt import PublishError
from hub.service import HubService, main
from sync import topics

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = "edge-07"
RESTRICTED = {"weldCurrent": {"value": 212.5, "uom": "AMP", "class": "restricted"},
              "cycleTime": {"value": 41.0, "class": "public"},
              "pressForce": {"value": 8.1, "class": "partner"}}


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll a condition with a bound; fail naming it."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


class Client:
    """A paho MQTT 5 client that records what it receives."""

    def __init__(self, broker: PrivateBroker, *subscriptions: str) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"test-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if subscriptions:
            self.client.subscribe([(s, 1) for s in subscriptions])
            assert self._subscribed.wait(5), "SUBACK not received"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    def received(self, prefix: str = "") -> list[mqtt.MQTTMessage]:
        with self._lock:
            return [m for m in self.messages if m.topic.startswith(prefix)]

    def payloads(self, prefix: str = "") -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.received(prefix) if m.payload]

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class RunningHub:
    """A HubService on its own thread and event loop."""

    def __init__(self, config: HubConfig, broker: PrivateBroker) -> None:
        self.service = HubService(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None
        watcher = Client(broker, topics.hub_status())
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)
        # The hub publishes "online" right after subscribing, so once a watcher sees it the
        # ingest subscription is in place.
        wait_until(lambda: any(p.get("online") for p in watcher.payloads()), "hub online")
        watcher.close()
        # The status is retained (another hub's "online" may be what the watcher saw).
        wait_until(lambda: self.service.mqtt is not None and self.service.mqtt.subscribed.is_set(),
                   "hub subscribed")

    def _main(self) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await self.service.run(self._stop)

        try:
            asyncio.run(run())
        except BaseException as error:  # reported by close()
            self.error = error
            self._ready.set()

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)
        assert not self._thread.is_alive(), "hub did not stop"
        if self.error is not None:
            raise self.error


def hub_config(broker: PrivateBroker, db_url: str, client_id: str = "keyop-hub-test"
               ) -> HubConfig:
    return parse_config(
        f"""
hub: {{id: hub, database: "{db_url}"}}
api: {{port: 0}}
mqtt: {{host: {broker.host}, port: {broker.port}, client_id: {client_id}, share_group: hubtest}}
suppliers:
  acme: {{partner_params: false}}
  bolt: {{partner_params: true, params: [pressForce]}}
routes:
  - supplier: acme
    work_orders: ["WO-1001", "WO-1003*"]
  - supplier: bolt
    work_orders: ["WO-1002", "WO-1003"]
""",
        "test-hub.yaml",
    )


@pytest.fixture
def clients(broker: PrivateBroker) -> Iterator[dict[str, Client]]:
    made = {
        "edge": Client(broker, topics.down_ack(GATEWAY)),
        "acme": Client(broker, topics.sup_all("acme")),
        "bolt": Client(broker, topics.sup_all("bolt")),
    }
    yield made
    for client in made.values():
        client.close()


def acked(edge: Client) -> list[int]:
    return [int(p["sequence"]) for p in edge.payloads() if p.get("sourceepoch") == EPOCH]


def events_by_id(client: Client) -> dict[str, int]:
    counts: dict[str, int] = {}
    for payload in client.payloads("keyop/v1/sup/"):
        if "specversion" in payload:
            counts[payload["id"]] = counts.get(payload["id"], 0) + 1
    return counts


def batch(*events: bytes) -> bytes:
    return b"[" + b",".join(events) + b"]"


@pytest.mark.timeout(60)
def test_ingest_dedupe_ack_and_fanout(
    broker: PrivateBroker, hub_db_url: str, clients: dict[str, Client]
) -> None:
    hub = RunningHub(hub_config(broker, hub_db_url), broker)
    edge = clients["edge"]
    up = topics.up_events(GATEWAY)
    ev = {seq: make_event(seq, params=RESTRICTED) for seq in range(1, 5)}
    ev.update({seq: make_event(seq, work_order="WO-1002") for seq in (5, 6)})
    try:
        edge.publish(up, ev[1])
        wait_until(lambda: acked(edge) == [1], "ack of seq 1")
        # Out of order: 3 leaves a hole (no new ack), the batch [2, 4] fills it.
        edge.publish(up, ev[3])
        wait_until(lambda: hub.service.stored == 2, "seq 3 stored")
        edge.publish(up, batch(ev[2], ev[4]))
        wait_until(lambda: acked(edge)[-1:] == [4], "ack of seq 4")
        # A repeat is absorbed and acknowledged again (the edge may have lost the ack).
        edge.publish(up, ev[2])
        wait_until(lambda: acked(edge).count(4) == 2, "re-ack of seq 4")
        edge.publish(up, batch(ev[5], ev[6], ev[5]))
        wait_until(lambda: acked(edge)[-1:] == [6], "ack of seq 6")

        service = hub.service
        assert service.stored == 6
        assert service.duplicates == 2
        assert service.gaps == 1
        assert acked(edge) == [1, 4, 4, 6]
        assert service.store is not None and service.store.count_packets() == 6

        # acme: its work order's packets, each once, restricted and partner params removed.
        acme, bolt = clients["acme"], clients["bolt"]
        ids = {seq: json.loads(ev[seq])["id"] for seq in ev}
        wait_until(lambda: len(events_by_id(acme)) == 4, "acme's 4 events")
        wait_until(lambda: len(events_by_id(bolt)) == 2, "bolt's 2 events")
        store = service.store
        # Each feed holds its supplier's events only, at positions 1, 2, ...
        assert Feed(store).heads(["acme", "bolt"]) == {"acme": 4, "bolt": 2}
        wait_until(lambda: store.get_cursors(["acme", "bolt"]) == {"acme": 4, "bolt": 2},
                   "both cursors at the end of their feeds")
        assert events_by_id(acme) == {ids[s]: 1 for s in (1, 2, 3, 4)}
        assert events_by_id(bolt) == {ids[s]: 1 for s in (5, 6)}
        for payload in acme.payloads(topics.sup_events("acme", "WO-1001")):
            assert set(payload["data"]["params"]) == {"cycleTime"}
            assert payload["source"] == SOURCE
        events = acme.received(topics.sup_events("acme", "WO-1001"))
        props = events[0].properties
        assert props is not None
        sent = props.json()
        assert sent["ContentType"].startswith("application/cloudevents+json")
        user = [tuple(pair) for pair in sent["UserProperty"]]
        assert ("id", json.loads(events[0].payload)["id"]) in user
    finally:
        hub.close()

    # The retained state is the newest event's (seq 4 happened last), whatever the order.
    late = Client(broker, topics.sup_state("acme", "WO-1001", "OP30"))
    try:
        wait_until(lambda: bool(late.received()), "retained state")
        message = late.received()[0]
        assert message.retain
        state = json.loads(message.payload)
        assert state["lastEventId"] == json.loads(ev[4])["id"]
        assert state["state"] == "Running" and state["quantities"]["good"] == 40
    finally:
        late.close()


def _metric(text: str, name: str, **labels: str) -> float:
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
                     if labels else "")
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{wanted} not in metrics:\n{text}")


@pytest.mark.timeout(60)
def test_metrics_follow_the_running_hub(
    broker: PrivateBroker, hub_db_url: str, clients: dict[str, Client], tmp_path: Path
) -> None:
    admin_key = secrets.token_urlsafe(32)
    (tmp_path / "admin.key").write_text(admin_key)
    config = hub_config(broker, hub_db_url)
    config = config.model_copy(update={"api": config.api.model_copy(
        update={"admin_key_file": str(tmp_path / "admin.key")})})
    hub = RunningHub(config, broker)
    edge = clients["edge"]
    try:
        edge.publish(topics.up_events(GATEWAY), batch(make_event(1), make_event(2)))
        edge.publish(topics.up_events(GATEWAY), make_event(2))
        edge.publish(topics.up_events(GATEWAY), b"not json")
        # (The repeat may share the first batch's transaction, and so its acknowledgement.)
        wait_until(lambda: acked(edge)[-1:] == [2] and hub.service.duplicates == 1
                   and hub.service.dead_letters == 1, "the ack of 2, a repeat, a dead letter")
        service = hub.service
        assert service.api is not None and service.api.port
        url = f"http://127.0.0.1:{service.api.port}/metrics"
        assert httpx.get(url, timeout=10).status_code == 401
        wait_until(lambda: service.fanout_published >= 2, "fan-out of both packets to acme")
        response = httpx.get(url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=10)
        assert response.status_code == 200
        assert response.headers["content-type"] == CONTENT_TYPE_LATEST
        text = response.text
        assert _metric(text, "keyop_hub_packets_stored_total", hub="hub") == 2
        assert _metric(text, "keyop_hub_packets_duplicate_total", hub="hub") == 1
        assert _metric(text, "keyop_hub_dead_letters_total", hub="hub") == 1
        assert _metric(text, "keyop_hub_messages_total", hub="hub") == 3
        assert _metric(text, "keyop_hub_broker_connected", hub="hub") == 1
        assert _metric(text, "keyop_hub_role", hub="hub", role="ingest") == 1
        assert _metric(text, "keyop_hub_role", hub="hub", role="fanout") == 1
        assert _metric(text, "keyop_hub_fanout_lease_held", hub="hub") == 1
        assert _metric(text, "keyop_hub_fanout_messages_total", hub="hub") >= 2
        # bolt has no packets of its own, but its cursor moves past acme's as well.
        wait_until(lambda: _metric(httpx.get(url, headers={
            "Authorization": f"Bearer {admin_key}"}, timeout=10).text,
            "keyop_hub_fanout_lag", supplier="acme") == 0, "acme caught up")
    finally:
        hub.close()


@pytest.mark.timeout(60)
def test_invalid_packets_go_to_dead_letters_and_the_hub_carries_on(
    broker: PrivateBroker, hub_db_url: str, clients: dict[str, Client]
) -> None:
    hub = RunningHub(hub_config(broker, hub_db_url), broker)
    edge = clients["edge"]
    up = topics.up_events(GATEWAY)
    bad_field = json.loads(make_event(1))
    bad_field["sequence"] = "1"
    try:
        edge.publish(up, b"{nope")
        # One bad event in a batch does not sink the good one next to it.
        edge.publish(up, batch(json.dumps(bad_field).encode(), make_event(1)))
        # A packet whose source is another gateway than the topic's.
        edge.publish(topics.up_events("edge-99"), make_event(2))
        edge.publish(up, make_event(2))
        wait_until(lambda: acked(edge)[-1:] == [2], "ack of seq 2")
        wait_until(lambda: hub.service.dead_letters == 3, "3 dead letters")
        assert hub.service.stored == 2
        store = hub.service.store
        assert store is not None
        reasons = [reason for _, reason, _ in store.list_dead_letters()]
        assert "not valid JSON" in reasons[0]
        assert any("sequence: String should match" in r for r in reasons)
        assert any("does not belong to gateway 'edge-99'" in r for r in reasons)
    finally:
        hub.close()


@pytest.mark.timeout(60)
def test_restart_resumes_fanout_from_the_cursor(
    broker: PrivateBroker, hub_db_url: str, clients: dict[str, Client]
) -> None:
    config = hub_config(broker, hub_db_url)
    edge, acme = clients["edge"], clients["acme"]
    up = topics.up_events(GATEWAY)
    first = [make_event(seq) for seq in (1, 2, 3)]
    hub = RunningHub(config, broker)
    try:
        edge.publish(up, batch(*first))
        wait_until(lambda: len(events_by_id(acme)) == 3, "first 3 events at acme")
        wait_until(lambda: hub.service.fanout_published >= 4, "fan-out PUBACKs")
    finally:
        hub.close()

    # Published while the hub is away: its persistent broker session keeps it.
    edge.publish(up, make_event(4))
    again = RunningHub(config, broker)
    try:
        edge.publish(up, make_event(5))
        wait_until(lambda: len(events_by_id(acme)) == 5, "events 4 and 5 at acme")
        wait_until(lambda: acked(edge)[-1:] == [5], "ack of seq 5")
        store = again.service.store
        assert store is not None
        wait_until(lambda: store.get_cursors(["acme"])["acme"] == 5, "acme's cursor")
        # Only the new packets went out: two events plus one or two retained states (one per
        # fan-out step that saw them); nothing of the first run was resent.
        assert 3 <= again.service.fanout_published <= 4
        assert set(events_by_id(acme).values()) == {1}
    finally:
        again.close()


@pytest.mark.timeout(60)
def test_main_runs_the_config_and_stops_cleanly_on_sigterm(
    broker: PrivateBroker, tmp_path: Path
) -> None:
    config = tmp_path / "hub.yaml"
    config.write_text(
        (ROOT / "config" / "hub.yaml").read_text()
        .replace("port: 1883", f"port: {broker.port}")
        .replace("sqlite:///var/hub.db", f"sqlite:///{tmp_path / 'var' / 'hub.db'}")
    )
    watcher = Client(broker, topics.hub_status())
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from hub.service import main; "
         "sys.exit(main(sys.argv[1]))", str(config)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: any(p.get("online") for p in watcher.payloads()), "hub online")
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0, output.decode()
        # It said goodbye on the retained status topic, and made its database folder.
        wait_until(lambda: watcher.payloads()[-1].get("online") is False, "hub offline")
        assert (tmp_path / "var" / "hub.db").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        watcher.close()


def test_main_refuses_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "hub.yaml"
    config.write_text("hub: {datbase: x}\n")
    assert main(str(config)) == 2


def test_cursors_stop_before_the_first_unacknowledged_message() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        def future(error: Exception | None = None, done: bool = True) -> asyncio.Future[None]:
            f: asyncio.Future[None] = loop.create_future()
            if done:
                f.set_result(None) if error is None else f.set_exception(error)
            return f

        sent: Sent = {
            "acme": [(3, future()), (5, future(PublishError("refused"))), (7, future())],
            "bolt": [(3, future()), (9, future(done=False))],
            "cargo": [(4, future())],
            "idle": [],
        }
        cursors = {"acme": 2, "bolt": 2, "cargo": 2, "idle": 9}
        advanced, acknowledged, failures = settle_cursors(
            cursors, sent, {"acme": 9, "bolt": 9, "cargo": 9, "idle": 9})
        # acme stops before 5 (7 is resent too); bolt before 9; cargo and idle reach the end.
        assert advanced == {"acme": 4, "bolt": 8, "cargo": 9}
        assert acknowledged == 4
        assert [(s, pk) for s, pk, _ in failures] == [("acme", 5), ("bolt", 9)]
        assert "refused" in failures[0][2] and "no PUBACK" in failures[1][2]
        # The events of one CloudEvents batch share a message: counted once.
        shared = future()
        batched: Sent = {"acme": [(3, shared), (4, shared), (6, shared)], "bolt": [(5, future())]}
        advanced, acknowledged, failures = settle_cursors({"acme": 2, "bolt": 2}, batched,
                                                          {"acme": 6, "bolt": 6})
        assert advanced == {"acme": 6, "bolt": 6} and acknowledged == 2 and failures == []

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_retained_state_is_cleared_when_the_operation_closes(
    broker: PrivateBroker, hub_db_url: str, clients: dict[str, Client]
) -> None:
    hub = RunningHub(hub_config(broker, hub_db_url), broker)
    edge = clients["edge"]
    up = topics.up_events(GATEWAY)
    running = make_event(1, work_order="WO-1003", operation="OP40")
    done = json.loads(make_event(4, work_order="WO-1001", state="Completed"))
    done["type"] = "keyop.operation.completed"
    try:
        edge.publish(up, batch(make_event(3, work_order="WO-1001"), running))
        wait_until(lambda: hub.service.stored == 2, "stored")
        # The completion (seq 4), then an older Running event (seq 2) that arrives late and
        # changes nothing.
        edge.publish(up, json.dumps(done).encode())
        edge.publish(up, make_event(2, work_order="WO-1001"))
        store = hub.service.store
        assert store is not None
        wait_until(lambda: store.count_packets() == 4, "4 stored")
        wait_until(lambda: store.get_cursors(["acme"])["acme"] == Feed(store).head("acme"),
                   "fanned out")
    finally:
        hub.close()
    late = Client(broker, "keyop/v1/sup/acme/state/#")
    try:
        # Retained messages follow the SUBACK at once: WO-1003's is there, WO-1001's is gone.
        wait_until(lambda: any("WO-1003" in m.topic for m in late.received()), "WO-1003 state")
        assert [m.topic for m in late.received()] == [
            topics.sup_state("acme", "WO-1003", "OP40")]
        assert store.states([("WO-1001", "OP30")])[("WO-1001", "OP30")].state == "Completed"
    finally:
        late.close()


@pytest.mark.timeout(60)
def test_a_supplier_can_take_cloudevents_batches(
    broker: PrivateBroker, hub_db_url: str, clients: dict[str, Client]
) -> None:
    config = hub_config(broker, hub_db_url)
    suppliers = dict(config.suppliers)
    suppliers["bolt"] = suppliers["bolt"].model_copy(update={"batch": True})
    hub = RunningHub(config.model_copy(update={"suppliers": suppliers}), broker)
    edge, bolt = clients["edge"], clients["bolt"]
    events = [make_event(seq, work_order="WO-1002", params=RESTRICTED) for seq in range(1, 9)]
    try:
        edge.publish(topics.up_events(GATEWAY), batch(*events))
        wait_until(lambda: acked(edge)[-1:] == [8], "ack of seq 8")
        store = hub.service.store
        assert store is not None
        wait_until(lambda: store.get_cursors(["bolt"])["bolt"] == Feed(store).head("bolt") == 8,
                   "fanned out")
        messages = bolt.received(topics.sup_events("bolt", "WO-1002"))
        assert messages and len(messages) < 8
        got: list[dict[str, Any]] = []
        for message in messages:
            assert message.properties is not None
            assert message.properties.json()["ContentType"].startswith(
                "application/cloudevents-batch+json")
            got += json.loads(message.payload)
        assert [int(e["sequence"]) for e in got] == list(range(1, 9))
        assert all(set(e["data"]["params"]) == {"pressForce"} for e in got)
    finally:
        hub.close()


def with_roles(config: HubConfig, *, ingest: bool = True, fanout: bool = True) -> HubConfig:
    return config.model_copy(update={"hub": config.hub.model_copy(
        update={"ingest": ingest, "fanout": fanout})})


@pytest.mark.timeout(90)
def test_split_roles_one_process_fans_out_another_ingests(
    broker: PrivateBroker, hub_db_url: str, clients: dict[str, Client]
) -> None:
    """hub.ingest / hub.fanout: the ingesting process stores and acks every packet once, the
    fan-out-only one (which once ingested under the same client id: its broker session still
    held the shared subscription) takes none of them and serves the supplier each once."""
    RunningHub(hub_config(broker, hub_db_url, "keyop-hub-fan"), broker).close()
    fan = RunningHub(with_roles(hub_config(broker, hub_db_url, "keyop-hub-fan"), ingest=False),
                     broker)
    ingest = RunningHub(with_roles(hub_config(broker, hub_db_url, "keyop-hub-in"),
                                   fanout=False), broker)
    edge, acme = clients["edge"], clients["acme"]
    events = [make_event(seq) for seq in range(1, 41)]
    try:
        for start in range(0, 40, 4):
            edge.publish(topics.up_events(GATEWAY), batch(*events[start:start + 4]))
        wait_until(lambda: max(acked(edge), default=0) == 40, "ack of seq 40", 30)
        wait_until(lambda: len(events_by_id(acme)) == 40, "acme's 40 events", 30)
        assert events_by_id(acme) == {json.loads(e)["id"]: 1 for e in events}
        assert (fan.service.messages, fan.service.stored) == (0, 0)
        assert ingest.service.stored == 40
        assert ingest.service.fanout is None
        assert fan.service.fanout is not None and fan.service.fanout.packets == 40
        assert fan.service.fanout.holds_lease
    finally:
        ingest.close()
        fan.close()
