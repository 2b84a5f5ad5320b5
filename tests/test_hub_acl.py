"""`keyop hub acl`: password and ACL files, and the Dynamic Security config, each checked against
a real Mosquitto started with them."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from test_hub_service import wait_until

from gateway import cli
from gateway.broker import PrivateBroker
from hub import dynsec
from hub.acl import (
    PBKDF2_ITERATIONS,
    accounts,
    acl_text,
    credentials,
    main,
    mosquitto_snippet,
    password_hash,
    write,
)
from hub.config import ConfigError, HubConfig, hash_key, parse_config
from sync import topics

CONFIG = """
hub: {id: hub}
mqtt: {username: keyop-hub}
gateways:
  edge-07: {}
  edge-08: {}
suppliers:
  acme: {}
  bolt: {}
routes: [{supplier: acme, work_orders: ["*"]}]
"""


class Session:
    """A paho MQTT 5 client that records connect, subscribe and publish outcomes."""

    def __init__(self, broker: PrivateBroker, username: str | None, password: str | None,
                 will: str | None = None):
        self.connected = threading.Event()
        self.connect_rc: ReasonCode | None = None
        self.granted: dict[int, list[ReasonCode]] = {}
        self.unsubscribed: dict[int, list[ReasonCode]] = {}
        self.acks: dict[int, ReasonCode] = {}
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"acl-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv5)
        if username is not None:
            client.username_pw_set(username, password)
        if will is not None:
            client.will_set(will, b"offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self.client = client
        client.connect(broker.host, broker.port)
        client.loop_start()
        assert self.connected.wait(10), "no CONNACK"

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self.connect_rc = rc
        self.connected.set()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[ReasonCode], _p: Any) -> None:
        with self._lock:
            self.granted[mid] = codes

    def _on_unsubscribe(self, _c: Any, _u: Any, mid: int, codes: list[ReasonCode],
                        _p: Any) -> None:
        with self._lock:
            self.unsubscribed[mid] = codes

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        with self._lock:
            self.acks[mid] = rc

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    @property
    def accepted(self) -> bool:
        return self.connect_rc is not None and not self.connect_rc.is_failure

    def subscribe(self, topic: str) -> bool:
        """True when the broker granted the subscription."""
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None, "not connected"
        wait_until(lambda: mid in self.granted, f"SUBACK for {topic}")
        return not self.granted[mid][0].is_failure

    def unsubscribe(self, topic: str) -> bool:
        """True when the broker allowed the UNSUBSCRIBE."""
        _, mid = self.client.unsubscribe(topic)
        assert mid is not None, "not connected"
        wait_until(lambda: mid in self.unsubscribed, f"UNSUBACK for {topic}")
        return not self.unsubscribed[mid][0].is_failure

    def publish(self, topic: str, payload: bytes = b"x") -> ReasonCode:
        info = self.client.publish(topic, payload, qos=1)
        wait_until(lambda: info.mid in self.acks, f"PUBACK for {topic}")
        return self.acks[info.mid]

    def topics(self) -> list[str]:
        with self._lock:
            return [m.topic for m in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self) -> None:
        """Vanish without a DISCONNECT, so the broker publishes the will."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


def _secret(out: Path, kind: str, name: str) -> str:
    return (out / "secrets" / f"{kind}-{name}.secret").read_text().strip()


def _assert_publish_rights(hub: Session, acme: Session, bolt: Session, edge7: Session,
                           edge8: Session) -> None:
    """Who may publish where (MQTT 5: a refused publish gets a failing PUBACK), and that each
    party receives only its own: the same in both export formats."""
    # Suppliers cannot publish at all, not even into their own subtree.
    assert acme.publish(topics.sup_events("acme", "WO-1")).is_failure
    # The hub writes supplier topics and acks; each party gets only its own.
    assert not hub.publish(topics.sup_events("acme", "WO-1"), b"for-acme").is_failure
    assert not hub.publish(topics.sup_events("bolt", "WO-2"), b"for-bolt").is_failure
    assert not hub.publish(topics.down_ack("edge-07"), b"ack-7").is_failure
    assert not hub.publish(topics.down_ack("edge-08"), b"ack-8").is_failure
    # An edge cannot publish as another edge, nor write acks or supplier topics.
    assert edge7.publish(topics.up_events("edge-08"), b"forged").is_failure
    assert edge7.publish(topics.down_ack("edge-07"), b"self-ack").is_failure
    assert edge7.publish(topics.sup_events("bolt", "WO-2"), b"spam").is_failure
    assert not edge7.publish(topics.up_events("edge-07"), b"real").is_failure
    wait_until(lambda: len(hub.messages) == 1, "the hub got edge-07's packet")
    wait_until(lambda: bool(acme.messages) and bool(bolt.messages) and bool(edge8.messages),
               "deliveries")
    assert hub.topics() == [topics.up_events("edge-07")]
    assert hub.messages[0].payload == b"real"
    assert acme.topics() == [topics.sup_events("acme", "WO-1")]


def _assert_a_forged_will_is_dropped(broker: PrivateBroker, hub: Session, secret: str) -> None:
    """A will is a publish too: Mosquitto 2.0.11 accepts a CONNECT whose will is a forged status
    (edge-07 as edge-08) but drops that will, and delivers an edge's own. `hub` must be
    subscribed to the gateways' status."""
    for will in (topics.up_status("edge-08"), topics.up_status("edge-07")):
        dying = Session(broker, "edge-07", secret, will=will)
        assert dying.accepted
        dying.drop()
    # The forged one died first, so once the real one is in, the forged one would be too.
    wait_until(lambda: topics.up_status("edge-07") in hub.topics(), "edge-07's own will")
    assert topics.up_status("edge-08") not in hub.topics()


@pytest.fixture
def config() -> HubConfig:
    return parse_config(CONFIG, "acl.yaml")


def test_password_hash_is_mosquittos_format() -> None:
    # A hash mosquitto_passwd 2.0.11 wrote for `secret123`.
    known = ("$7$101$ASM8ZONbmpIzPQcK$b70d/pj9LRpj8QXrwSAe+Ttb7QVMU7jM2g9zwYJX3jFM+CJ1LcNUiuxKZaV"
             "mcMqHWpVeJ56BJqV3ToKt0ARgPA==")
    import base64

    salt = base64.b64decode(known.split("$")[3])
    assert password_hash("secret123", salt) == known
    assert password_hash("secret123") != password_hash("secret123")  # salted


def test_acl_rules_and_refusals(config: HubConfig, tmp_path: Path) -> None:
    text = acl_text(accounts(config, tmp_path))
    assert "\npattern " not in text and "topic read #\n" not in text
    assert "user edge-07\ntopic write keyop/v1/up/edge-07/#\ntopic read keyop/v1/down/edge-07/#" \
        in text
    assert "user bolt\ntopic read keyop/v1/sup/bolt/#" in text
    with pytest.raises(ConfigError, match=r"gateways\.ed"):
        parse_config("gateways: {'ed+ge': {}}")
    with pytest.raises(ConfigError, match="suppliers"):
        parse_config("suppliers: {'ac#me': {}}")
    with pytest.raises(ConfigError, match="both a gateway and a supplier"):
        accounts(parse_config("gateways: {acme: {}}\nsuppliers: {acme: {}}"), tmp_path)


def test_cli_writes_files_and_keeps_given_secrets(tmp_path: Path) -> None:
    (tmp_path / "acme.secret").write_text("a-supplier-secret-of-enough-length\n")
    path = tmp_path / "hub.yaml"
    path.write_text(CONFIG.replace("acme: {}", f"acme: {{mqtt_password_file: "
                                                f"\"{tmp_path / 'acme.secret'}\"}}"))
    out = tmp_path / "out"
    assert main(path, out) == 0
    generated = sorted(p.name for p in (out / "secrets").iterdir())
    assert generated == ["api-acme.key", "api-bolt.key", "gateway-edge-07.secret",
                         "gateway-edge-08.secret", "hub-keyop-hub.secret", "supplier-bolt.secret"]
    hashes = parse_config((out / "api-keys.yaml").read_text())
    key = (out / "secrets" / "api-acme.key").read_text().strip()
    assert hashes.suppliers["acme"].api_key_hash == hash_key(key)
    assert oct((out / "passwd").stat().st_mode & 0o777) == "0o600"
    assert (out / "secrets" / "supplier-bolt.secret").stat().st_mode & 0o077 == 0
    first = (out / "secrets" / "supplier-bolt.secret").read_text()
    assert main(path, out) == 0  # again: the same secrets, new salts
    assert (out / "secrets" / "supplier-bolt.secret").read_text() == first
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateways: {acme: {}}\nsuppliers: {acme: {}}\n")
    assert main(bad, tmp_path / "bad") == 2


@pytest.mark.timeout(60)
def test_a_real_mosquitto_enforces_the_files(config: HubConfig, tmp_path: Path) -> None:
    out = tmp_path / "acl"
    write(config, out)

    # Started as root, Mosquitto drops to the `mosquitto` user, which may not read these 0600
    # files (in production: chown them to it); `user root` keeps it as it is (ignored unless
    # started as root).
    extra = mosquitto_snippet(out) + "user root\n"
    with PrivateBroker(workdir=tmp_path / "broker", extra_config=extra) as broker:
        # No anonymous access, no wrong password, no made-up wildcard username.
        for user, password in ((None, None), ("acme", "wrong-password-123"),
                               ("ac+me", _secret(out, "supplier", "acme")), ("#", "x" * 20)):
            session = Session(broker, user, password)
            assert not session.accepted, user
            session.close()

        hub = Session(broker, "keyop-hub", _secret(out, "hub", "keyop-hub"))
        acme = Session(broker, "acme", _secret(out, "supplier", "acme"))
        bolt = Session(broker, "bolt", _secret(out, "supplier", "bolt"))
        edge7 = Session(broker, "edge-07", _secret(out, "gateway", "edge-07"))
        edge8 = Session(broker, "edge-08", _secret(out, "gateway", "edge-08"))
        sessions = [hub, acme, bolt, edge7, edge8]
        try:
            assert all(s.accepted for s in sessions)
            # Suppliers: only their own subtree; never '#', '$SYS/#' or another's. Mosquitto's
            # acl_file may grant such a SUBSCRIBE, but delivers nothing the ACL does not allow
            # (checked below: bolt receives only its own message, no retained $SYS topic).
            assert acme.subscribe(topics.sup_all("acme"))
            assert bolt.subscribe(topics.sup_all("bolt"))
            for wider in (topics.sup_all("acme"), "keyop/v1/sup/+/events/#", "#", "$SYS/#",
                          "keyop/#", "keyop/v1/up/#"):
                bolt.subscribe(wider)
            edge8.subscribe("#")
            edge8.subscribe(topics.down_ack("edge-07"))
            assert edge8.subscribe(topics.down_ack("edge-08"))
            assert hub.subscribe(topics.hub_ingest_subscription("keyop-hub"))
            _assert_publish_rights(hub, acme, bolt, edge7, edge8)
            # (Overlapping granted filters may each deliver a copy of bolt's own message.)
            assert set(bolt.topics()) == {topics.sup_events("bolt", "WO-2")}
            assert set(edge8.topics()) == {topics.down_ack("edge-08")}
            assert hub.subscribe(topics.hub_status_subscription())
            _assert_a_forged_will_is_dropped(broker, hub, _secret(out, "gateway", "edge-07"))
        finally:
            for s in sessions:
                s.close()




def test_dynsec_config_denies_by_default_and_grants_each_role_its_own(
        config: HubConfig, tmp_path: Path) -> None:
    out = tmp_path / "dynsec"
    write(config, out, "dynsec")
    assert oct((out / "dynamic-security.json").stat().st_mode & 0o777) == "0o600"
    assert not (out / "passwd").exists() and not (out / "acl").exists()
    doc = json.loads((out / "dynamic-security.json").read_text())
    assert doc["defaultACLAccess"] == {"publishClientSend": False, "publishClientReceive": False,
                                       "subscribe": False, "unsubscribe": False}
    # No admin client, and nobody may reach the plugin's control topic.
    assert [c["username"] for c in doc["clients"]] == [
        "keyop-hub", "edge-07", "edge-08", "acme", "bolt"]
    assert "$CONTROL" not in json.dumps(doc)
    roles = {r["rolename"]: {(a["acltype"], a["topic"]) for a in r["acls"] if a["allow"]}
             for r in doc["roles"]}
    assert roles["supplier-bolt"] == {
        ("subscribePattern", "keyop/v1/sup/bolt/#"), ("unsubscribePattern", "keyop/v1/sup/bolt/#"),
        ("publishClientReceive", "keyop/v1/sup/bolt/#")}
    assert roles["gateway-edge-07"] == {
        ("publishClientSend", "keyop/v1/up/edge-07/#"),
        ("subscribePattern", "keyop/v1/down/edge-07/#"),
        ("unsubscribePattern", "keyop/v1/down/edge-07/#"),
        ("publishClientReceive", "keyop/v1/down/edge-07/#")}
    hub = roles["hub-keyop-hub"]
    assert ("subscribePattern", "$share/keyop-hub/keyop/v1/up/#") in hub
    assert ("publishClientSend", topics.hub_status()) in hub
    assert not any(topic in ("#", "$SYS/#") or "%" in topic
                   for grants in roles.values() for _, topic in grants)
    # Each client's hash is PBKDF2-SHA512 of the same secret the acl-file format uses.
    kinds = {account.username: account.kind for account in accounts(config, out)}
    for client in doc["clients"]:
        salt, digest = base64.b64decode(client["salt"]), base64.b64decode(client["password"])
        kind = kinds[client["username"]]
        secret = _secret(out, kind, client["username"])
        assert (len(salt), len(digest), client["iterations"]) == (12, 64, PBKDF2_ITERATIONS)
        assert digest == hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, PBKDF2_ITERATIONS)
        assert client["roles"] == [{"rolename": f"{kind}-{client['username']}"}]
    snippet = (out / "mosquitto.conf").read_text()
    assert f"plugin_opt_config_file {(out / 'dynamic-security.json').resolve()}\n" in snippet
    assert f"plugin {dynsec.PLUGIN}\n" in snippet and "allow_anonymous false\n" in snippet
    assert not any(line.startswith(("password_file", "acl_file"))
                   for line in snippet.splitlines())
    with pytest.raises(ConfigError, match="format 'xml'"):
        write(config, out, "xml")


def test_cli_dynsec_format_keeps_the_accounts_secrets(tmp_path: Path) -> None:
    path = tmp_path / "hub.yaml"
    path.write_text(CONFIG)
    out = tmp_path / "out"
    assert cli.main(["hub", "acl", "-c", str(path), "--out", str(out)]) == 0
    assert (out / "passwd").exists() and "acl_file" in (out / "mosquitto.conf").read_text()
    # The broker lets the hub keep its whole fan-out window in flight (hub/mqtt.py).
    assert "\nmax_inflight_messages 100\n" in (out / "mosquitto.conf").read_text()
    before = {p.name: p.read_text() for p in (out / "secrets").iterdir()}
    assert cli.main(["hub", "acl", "-c", str(path), "--out", str(out), "--format", "dynsec"]) == 0
    assert {p.name: p.read_text() for p in (out / "secrets").iterdir()} == before
    doc = json.loads((out / "dynamic-security.json").read_text())
    hashed = {c["username"] for c in doc["clients"]}
    assert hashed == {line.split(":")[0] for line in (out / "passwd").read_text().splitlines()}
    assert "plugin_opt_config_file" in (out / "mosquitto.conf").read_text()
    assert "\nmax_inflight_messages 100\n" in (out / "mosquitto.conf").read_text()
    with pytest.raises(SystemExit):
        cli.main(["hub", "acl", "-c", str(path), "--out", str(out), "--format", "xml"])


def test_dynsec_rules_come_from_the_shared_model(config: HubConfig, tmp_path: Path) -> None:
    found = accounts(config, tmp_path)
    paired, generated = credentials(found)
    assert len(generated) == len(found)  # first run: every secret is new
    # One model for both formats: each acl_file line becomes the dynsec grants of its access.
    doc = dynsec.config(paired)
    for account, role in zip(found, doc["roles"], strict=True):
        sends = {a["topic"] for a in role["acls"] if a["acltype"] == "publishClientSend"}
        receives = {a["topic"] for a in role["acls"] if a["acltype"] == "publishClientReceive"}
        assert sends == {r.topic for r in account.rules if "write" in r.access}
        assert receives == {r.topic for r in account.rules if "read" in r.access}
    assert credentials(found)[1] == []  # again: read back, none generated


@pytest.mark.timeout(60)
def test_a_real_mosquitto_with_dynsec_refuses_in_the_suback(
        config: HubConfig, tmp_path: Path) -> None:
    out = tmp_path / "dynsec"
    write(config, out, "dynsec")
    # As in the acl_file test: `user root` keeps a root-started Mosquitto able to read 0600 files.
    extra = (out / "mosquitto.conf").read_text() + "user root\n"
    with PrivateBroker(workdir=tmp_path / "broker", extra_config=extra) as broker:
        # No anonymous access, no wrong or borrowed password, no wildcard username.
        for user, password in ((None, None), ("bolt", "wrong-password-123"),
                               ("bolt", _secret(out, "supplier", "acme")),
                               ("ac+me", _secret(out, "supplier", "acme")),
                               ("#", "x" * 20), ("+", "x" * 20)):
            session = Session(broker, user, password)
            assert not session.accepted, user
            session.close()

        # The hub and the edges connect with their wills, as the real ones do.
        hub = Session(broker, "keyop-hub", _secret(out, "hub", "keyop-hub"),
                      will=topics.hub_status())
        acme = Session(broker, "acme", _secret(out, "supplier", "acme"))
        bolt = Session(broker, "bolt", _secret(out, "supplier", "bolt"))
        edge7 = Session(broker, "edge-07", _secret(out, "gateway", "edge-07"),
                        will=topics.up_status("edge-07"))
        edge8 = Session(broker, "edge-08", _secret(out, "gateway", "edge-08"),
                        will=topics.up_status("edge-08"))
        sessions = [hub, acme, bolt, edge7, edge8]
        try:
            assert all(s.accepted for s in sessions)
            # Supplier bolt: its own subtree is granted; every wider or foreign filter gets a
            # failure reason code in the SUBACK (acl_file would grant these).
            assert acme.subscribe(topics.sup_all("acme"))
            assert bolt.subscribe(topics.sup_all("bolt"))
            for wider in (topics.sup_all("acme"), "keyop/v1/sup/+/events/#", "#", "$SYS/#",
                          "keyop/#", "keyop/v1/up/#", "$share/g/keyop/v1/sup/acme/#",
                          topics.hub_ingest_subscription("keyop-hub")):
                assert not bolt.subscribe(wider), wider
            assert not bolt.unsubscribe(topics.sup_all("acme"))
            # Edges: their own ack topic only.
            for foreign in ("#", topics.down_ack("edge-07"), "keyop/v1/down/+/ack",
                            "keyop/v1/down/#", topics.up_events("edge-07")):
                assert not edge8.subscribe(foreign), foreign
            assert edge8.subscribe(topics.down_ack("edge-08"))
            # The hub: its shared ingest and the gateways' status, but not `#` nor another
            # share group's copy of the ingest.
            assert hub.subscribe(topics.hub_ingest_subscription("keyop-hub"))
            assert hub.subscribe(topics.hub_status_subscription())
            assert not hub.subscribe("#")
            assert not hub.subscribe(topics.hub_ingest_subscription("other-group"))
            _assert_publish_rights(hub, acme, bolt, edge7, edge8)
            assert bolt.topics() == [topics.sup_events("bolt", "WO-2")]
            assert edge8.topics() == [topics.down_ack("edge-08")]
            _assert_a_forged_will_is_dropped(broker, hub, _secret(out, "gateway", "edge-07"))
            # Unsubscribing from what it may subscribe to is allowed.
            assert bolt.unsubscribe(topics.sup_all("bolt"))
            assert edge8.unsubscribe(topics.down_ack("edge-08"))
        finally:
            for s in sessions:
                s.close()
