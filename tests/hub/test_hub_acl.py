"""`keyop hub acl`: password and ACL files, and the Dynamic Security config, each checked against
a real Mosquitto started with them."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from hubkit import EPOCH, HubThread, make_event, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from cli.main import main as keyop
from devstack.mosquitto import PrivateBroker, free_port
from hub import dynsec
from hub.acl import (
    MESSAGE_SIZE_LIMIT,
    OUTPUTS,
    PBKDF2_ITERATIONS,
    accounts,
    acl_text,
    credentials,
    main,
    mosquitto_snippet,
    password_hash,
    write,
)
from hub.config import HubConfig, HubConfigError, hash_key, parse_config
from hub.store import Store
from sync import topics
from sync.packet import MAX_EVENT_BYTES

CONFIG = """
hub: {id: hub}
mqtt: {username: keyop-hub}
gateways:
  edge-07: {site: plant1}
  edge-08: {site: plant1}
suppliers:
  acme: {}
  bolt: {}
routes: [{supplier: acme, work_orders: ["*"]}]
"""
# The client id each account of CONFIG must connect with (README, "Broker accounts").
CLIENT_IDS = {"keyop-hub": "keyop-hub-1", "edge-07": "keyop-edge-edge-07",
              "edge-08": "keyop-edge-edge-08", "acme": "acme", "bolt": "bolt"}


class Session:
    """A paho MQTT 5 client that records connect, subscribe and publish outcomes."""

    def __init__(self, broker: PrivateBroker, username: str | None, password: str | None,
                 will: str | None = None, client_id: str | None = None):
        self.connected = threading.Event()
        self.connect_rc: ReasonCode | None = None
        self.disconnects: list[ReasonCode] = []
        self.granted: dict[int, list[ReasonCode]] = {}
        self.unsubscribed: dict[int, list[ReasonCode]] = {}
        self.acks: dict[int, ReasonCode] = {}
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        client = mqtt.Client(CallbackAPIVersion.VERSION2,
                             client_id=client_id or f"acl-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv5)
        if username is not None:
            client.username_pw_set(username, password)
        if will is not None:
            client.will_set(will, b"offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
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

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        with self._lock:
            self.disconnects.append(rc)

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


def _login(broker: PrivateBroker, out: Path, kind: str, name: str, *,
           will: str | None = None, client_id: str | None = None) -> Session:
    """A session of account `name` with its own secret, by default with its own client id."""
    return Session(broker, name, _secret(out, kind, name), will=will,
                   client_id=client_id or CLIENT_IDS[name])


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


def _assert_a_forged_will_is_dropped(broker: PrivateBroker, hub: Session, out: Path) -> None:
    """A will is a publish too: Mosquitto 2.0.11 accepts a CONNECT whose will is a forged status
    (edge-07 as edge-08) but drops that will, and delivers an edge's own. `hub` must be
    subscribed to the gateways' status."""
    for will in (topics.up_status("edge-08"), topics.up_status("edge-07")):
        dying = _login(broker, out, "gateway", "edge-07", will=will)
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
    with pytest.raises(HubConfigError, match=r"gateways\.ed"):
        parse_config("gateways: {'ed+ge': {}}")
    with pytest.raises(HubConfigError, match="suppliers"):
        parse_config("suppliers: {'ac#me': {}}")
    with pytest.raises(HubConfigError, match="both a gateway and a supplier"):
        accounts(parse_config("gateways: {acme: {site: p1}}\nsuppliers: {acme: {}}"), tmp_path)


def test_cli_writes_files_and_keeps_given_secrets(tmp_path: Path) -> None:
    (tmp_path / "acme.secret").write_text("a-supplier-secret-of-enough-length\n")
    (tmp_path / "acme.secret").chmod(0o600)
    path = tmp_path / "hub.yaml"
    path.write_text(CONFIG.replace("acme: {}", f"acme: {{mqtt_password_file: "
                                                f"\"{tmp_path / 'acme.secret'}\"}}"))
    out = tmp_path / "out"
    assert main(path, out, "acl-file") == 0
    generated = sorted(p.name for p in (out / "secrets").iterdir())
    assert generated == ["api-acme.key", "api-admin.key", "api-bolt.key", "gateway-edge-07.secret",
                         "gateway-edge-08.secret", "hub-keyop-hub.secret", "supplier-bolt.secret"]
    hashes = parse_config((out / "api-keys.yaml").read_text())
    key = (out / "secrets" / "api-acme.key").read_text().strip()
    assert hashes.suppliers["acme"].api_key_hashes == [hash_key(key)]
    assert oct((out / "passwd").stat().st_mode & 0o777) == "0o600"
    assert (out / "secrets" / "supplier-bolt.secret").stat().st_mode & 0o077 == 0
    assert (out / "secrets").stat().st_mode & 0o777 == 0o700
    first = (out / "secrets" / "supplier-bolt.secret").read_text()
    assert main(path, out, "acl-file") == 0  # again: the same secrets, new salts
    assert (out / "secrets" / "supplier-bolt.secret").read_text() == first
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateways: {acme: {site: p1}}\nsuppliers: {acme: {}}\n")
    assert main(bad, tmp_path / "bad") == 2


@pytest.mark.timeout(60)
def test_a_real_mosquitto_enforces_the_files(config: HubConfig, tmp_path: Path) -> None:
    out = tmp_path / "acl"
    write(config, out, "acl-file")

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

        hub = _login(broker, out, "hub", "keyop-hub")
        acme = _login(broker, out, "supplier", "acme")
        bolt = _login(broker, out, "supplier", "bolt")
        edge7 = _login(broker, out, "gateway", "edge-07")
        edge8 = _login(broker, out, "gateway", "edge-08")
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
            # Every supplier may read the hub's own status; a gateway may not.
            assert acme.subscribe(topics.hub_status())
            assert not hub.publish(topics.hub_status(), b'{"online": true}').is_failure
            wait_until(lambda: topics.hub_status() in acme.topics(), "acme reads hub status")
            wait_until(lambda: topics.hub_status() in bolt.topics(), "bolt reads it too")
            assert topics.hub_status() not in edge8.topics()
            assert hub.subscribe(topics.hub_status_subscription())
            # The dying sessions below use edge-07's client id: edge7 leaves first, cleanly
            # (no will), so that only theirs are in play.
            edge7.close()
            _assert_a_forged_will_is_dropped(broker, hub, out)
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
    # Its own subtree, and the hub's status (online, last ingest, lag), which every supplier
    # may read.
    assert roles["supplier-bolt"] == {
        ("subscribePattern", "keyop/v1/sup/bolt/#"), ("unsubscribePattern", "keyop/v1/sup/bolt/#"),
        ("publishClientReceive", "keyop/v1/sup/bolt/#"),
        ("subscribePattern", "keyop/v1/hub/status"), ("unsubscribePattern", "keyop/v1/hub/status"),
        ("publishClientReceive", "keyop/v1/hub/status")}
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
    with pytest.raises(HubConfigError, match="format 'xml'"):
        write(config, out, "xml")


def test_cli_formats_share_the_accounts_secrets(tmp_path: Path) -> None:
    path = tmp_path / "hub.yaml"
    path.write_text(CONFIG)
    out = tmp_path / "out"
    # The default format is dynsec: the only one that keeps other accounts out of the hub's
    # share group (test_only_the_hub_takes_shares_of_the_ingest).
    assert keyop(["hub", "acl", "-c", str(path), "--out", str(out)]) == 0
    assert (out / "dynamic-security.json").exists() and not (out / "passwd").exists()
    conf = (out / "mosquitto.conf").read_text()
    assert "plugin_opt_config_file" in conf and "\nacl_file" not in conf
    # The broker lets the hub keep its whole fan-out window in flight (hub/mqtt.py).
    assert "\nmax_inflight_messages 100\n" in conf
    assert f"\nmessage_size_limit {MESSAGE_SIZE_LIMIT}\n" in conf
    before = {p.name: p.read_text() for p in (out / "secrets").iterdir()}
    assert keyop(["hub", "acl", "-c", str(path), "--out", str(out), "--format",
                     "acl-file"]) == 0
    assert {p.name: p.read_text() for p in (out / "secrets").iterdir()} == before
    doc = json.loads((out / "dynamic-security.json").read_text())
    hashed = {c["username"] for c in doc["clients"]}
    assert hashed == {line.split(":")[0] for line in (out / "passwd").read_text().splitlines()}
    conf = (out / "mosquitto.conf").read_text()
    assert (out / "passwd").exists() and "\nacl_file" in conf
    assert "\nuse_username_as_clientid true\n" in conf
    assert "\nmax_inflight_messages 100\n" in conf
    assert f"\nmessage_size_limit {MESSAGE_SIZE_LIMIT}\n" in conf
    with pytest.raises(SystemExit):
        keyop(["hub", "acl", "-c", str(path), "--out", str(out), "--format", "xml"])


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
            # With the client id the account would be bound to: only the password fails.
            session = Session(broker, user, password, client_id=CLIENT_IDS.get(user or ""))
            assert not session.accepted, user
            session.close()

        # The hub and the edges connect with their wills, as the real ones do.
        hub = _login(broker, out, "hub", "keyop-hub", will=topics.hub_status())
        acme = _login(broker, out, "supplier", "acme")
        bolt = _login(broker, out, "supplier", "bolt")
        edge7 = _login(broker, out, "gateway", "edge-07", will=topics.up_status("edge-07"))
        edge8 = _login(broker, out, "gateway", "edge-08", will=topics.up_status("edge-08"))
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
            # The dying sessions below use edge-07's client id: edge7 leaves first, cleanly
            # (no will), so that only theirs are in play.
            edge7.close()
            _assert_a_forged_will_is_dropped(broker, hub, out)
            # Unsubscribing from what it may subscribe to is allowed.
            assert bolt.unsubscribe(topics.sup_all("bolt"))
            assert edge8.unsubscribe(topics.down_ack("edge-08"))
        finally:
            for s in sessions:
                s.close()


# -- no account can hurt another ------------------------------------------------------------

WORKERS = CONFIG.replace("mqtt: {username: keyop-hub}",
                         "mqtt:\n  username: keyop-hub\n  worker_accounts: {keyop-hub-2: {}}")


def _broker_for(config: HubConfig, out: Path, fmt: str, tmp_path: Path,
                port: int | None = None) -> PrivateBroker:
    """A Mosquitto configured only by what `keyop hub acl --format fmt` wrote."""
    write(config, out, fmt)
    # `user root` keeps a root-started Mosquitto able to read the 0600 files (see above).
    extra = (out / "mosquitto.conf").read_text() + "user root\n"
    return PrivateBroker(port, workdir=tmp_path / "broker", extra_config=extra)


def test_each_account_has_its_client_id(tmp_path: Path) -> None:
    from sync.uplink import UplinkConfig

    found = accounts(parse_config(WORKERS), tmp_path)
    assert {a.username: a.client_id for a in found} == {**CLIENT_IDS, "keyop-hub-2": "keyop-hub-2"}
    worker = next(a for a in found if a.username == "keyop-hub-2")
    assert worker.kind == "hub" and worker.rules == found[0].rules
    assert worker.secret_file == tmp_path / "secrets" / "hub-keyop-hub-2.secret"
    # What the edge's uplink really sends.
    edge = UplinkConfig(host="h", port=1, gateway="edge-07", source="plant1/edge-07")
    assert edge.client_id == CLIENT_IDS["edge-07"]
    doc = dynsec.config(credentials(found)[0])
    assert {c["username"]: c["clientid"] for c in doc["clients"]} == {
        a.username: a.client_id for a in found}
    # A client id of two accounts would let one take the other's session.
    for text, message in (
            (WORKERS.replace("keyop-hub-2: {}", "keyop-hub-2: {client_id: keyop-hub-1}"),
             "client id 'keyop-hub-1' is used by two hub accounts"),
            (WORKERS.replace("keyop-hub-2: {}", "keyop-hub-2: {client_id: acme}"),
             "client id 'acme' is both a hub and a supplier"),
            (WORKERS.replace("keyop-hub-2: {}", "bolt: {}"),
             "broker username 'bolt' is both a hub and a supplier")):
        with pytest.raises(HubConfigError, match=message):
            accounts(parse_config(text), tmp_path)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("fmt", ["dynsec", "acl-file"])
def test_no_account_takes_over_another_session(fmt: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with _broker_for(parse_config(WORKERS), out, fmt, tmp_path) as broker:
        hub = _login(broker, out, "hub", "keyop-hub")
        worker = Session(broker, "keyop-hub-2", _secret(out, "hub", "keyop-hub-2"),
                         client_id="keyop-hub-2")
        bolt = _login(broker, out, "supplier", "bolt")
        edge7 = _login(broker, out, "gateway", "edge-07")
        victims = [hub, worker, bolt, edge7]
        attempts = []
        try:
            assert all(s.accepted for s in victims)
            assert hub.subscribe(topics.hub_ingest_subscription("keyop-hub"))
            assert worker.subscribe(topics.hub_ingest_subscription("keyop-hub"))
            assert bolt.subscribe(topics.sup_all("bolt"))
            assert edge7.subscribe(topics.down_ack("edge-07"))
            # Each account with another's client id: the hub's, another hub worker's, another
            # supplier's, another gateway's.
            for kind, name, client_id in (
                    ("supplier", "acme", "keyop-hub-1"), ("supplier", "acme", "bolt"),
                    ("gateway", "edge-08", "keyop-hub-1"), ("gateway", "edge-08", "bolt"),
                    ("gateway", "edge-08", "keyop-edge-edge-07")):
                session = Session(broker, name, _secret(out, kind, name), client_id=client_id)
                attempts.append(session)
                # dynsec refuses the CONNECT; acl-file accepts it under the account's own
                # username as client id, which is no one else's session.
                assert session.accepted == (fmt == "acl-file"), (name, client_id)
            # Every victim still holds its session: each still gets what it is subscribed to
            # (a closed connection gets nothing) and none was disconnected.
            for publisher, topic in ((edge7, topics.up_events("edge-07")),
                                     (edge7, topics.up_events("edge-07")),
                                     (hub, topics.sup_events("bolt", "WO-2")),
                                     (hub, topics.down_ack("edge-07"))):
                assert not publisher.publish(topic, b"still-there").is_failure
            wait_until(lambda: len(hub.messages) + len(worker.messages) == 2,
                       "the hub processes' share of the ingest")
            wait_until(lambda: bool(bolt.messages) and bool(edge7.messages), "deliveries")
            assert all(s.disconnects == [] for s in victims), [s.disconnects for s in victims]
            # The account's own client id is accepted in both formats.
            own = _login(broker, out, "supplier", "acme")
            attempts.append(own)
            assert own.accepted
            # A hub worker with the main hub's client id: refused by dynsec; with acl-file it
            # becomes the worker's own client id (its username), so only the worker's own
            # session is replaced, never the main hub's.
            twin = Session(broker, "keyop-hub-2", _secret(out, "hub", "keyop-hub-2"),
                           client_id="keyop-hub-1")
            attempts.append(twin)
            assert twin.accepted == (fmt == "acl-file")
            if fmt == "acl-file":
                wait_until(lambda: bool(worker.disconnects), "the worker's session replaced")
            assert not edge7.publish(topics.up_events("edge-07"), b"still-there").is_failure
            wait_until(lambda: len(hub.messages) + len(twin.messages) + len(worker.messages) == 3,
                       "the ingest share after the twin")
            assert hub.disconnects == []
        finally:
            for s in victims + attempts:
                s.close()


# A supplier or gateway trying to join the hub's share group, by its exact filter or another.
ROGUE_SHARES = ("$share/keyop-hub/keyop/v1/up/+/events", "$share/keyop-hub/keyop/v1/up/#",
                "$share/keyop-hub/#", "$share/keyop-hub/keyop/#", "$share/keyop-hub/+/+/+/+/+",
                "$share/keyop-hub/keyop/v1/up/edge-07/events")


def _hub_yaml(out: Path, port: int, db: Path) -> HubConfig:
    """CONFIG as the real hub runs it: on the broker's port, logging in with its secret."""
    return parse_config(
        CONFIG.replace("hub: {id: hub}",
                       f'hub: {{id: hub, database: "sqlite:///{db}"}}\n'
                       "api: {enabled: false}\nalerts: {enabled: false}")
        .replace("mqtt: {username: keyop-hub}",
                 f"mqtt: {{username: keyop-hub, host: 127.0.0.1, port: {port}, "
                 f"password_file: \"{out / 'secrets' / 'hub-keyop-hub.secret'}\"}}"))


def _maximal_batch(first_seq: int, source: str) -> tuple[bytes, int]:
    """A CloudEvents batch as the uplink packs it, as close to the 64 KiB cap as events allow."""
    bodies: list[bytes] = []
    size = 2
    while True:
        body = make_event(first_seq + len(bodies), source=source)
        if size + len(body) + 1 > MAX_EVENT_BYTES:
            break
        bodies.append(body)
        size += len(body) + 1
    payload = b"[" + b",".join(bodies) + b"]"
    assert MAX_EVENT_BYTES - len(bodies[0]) <= len(payload) <= MAX_EVENT_BYTES
    return payload, len(bodies)


@pytest.mark.timeout(120)
def test_only_the_hub_takes_shares_of_the_ingest(tmp_path: Path) -> None:
    """dynsec (the default): nobody else joins the hub's share group; the hub stores every
    packet the gateways sent, a maximal batch included."""

    out, port = tmp_path / "out", free_port()
    config = _hub_yaml(out, port, tmp_path / "hub.db")
    with _broker_for(config, out, "dynsec", tmp_path, port) as broker:
        acme = _login(broker, out, "supplier", "acme")
        edge7 = _login(broker, out, "gateway", "edge-07")
        edge8 = _login(broker, out, "gateway", "edge-08")
        hub = HubThread(config)
        try:
            hub.wait_subscribed()
            for rogue in (acme, edge8):
                for share in ROGUE_SHARES:
                    assert not rogue.subscribe(share), share
            sent = 0
            for seq in range(1, 31):
                for edge, name in ((edge7, "edge-07"), (edge8, "edge-08")):
                    body = make_event(seq, source=f"plant1/{name}")
                    assert not edge.publish(topics.up_events(name), body).is_failure
                    sent += 1
            batch, count = _maximal_batch(31, "plant1/edge-07")
            assert not edge7.publish(topics.up_events("edge-07"), batch).is_failure
            sent += count
            wait_until(lambda: hub.service.stored == sent, f"the hub storing all {sent}", 30)
            assert hub.service.dead_letters == 0
            assert [m for m in acme.messages + edge8.messages if "/up/" in m.topic] == []
        finally:
            hub.close()
            for s in (acme, edge7, edge8):
                s.close()
    assert hub.error is None
    store = Store(config.hub.database)
    assert store.count_packets() == sent
    store.close()


@pytest.mark.timeout(60)
def test_acl_file_cannot_keep_others_out_of_the_share_group(tmp_path: Path) -> None:
    """What README says `acl-file` does not enforce, measured: Mosquitto 2.0.11 grants a
    supplier the hub's share filter, hands it its turn of the gateways' packets and then does
    not deliver them (the ACL), to it or to the hub."""
    out = tmp_path / "out"
    with _broker_for(parse_config(CONFIG), out, "acl-file", tmp_path) as broker:
        hub = _login(broker, out, "hub", "keyop-hub")
        acme = _login(broker, out, "supplier", "acme")
        edge7 = _login(broker, out, "gateway", "edge-07")
        try:
            assert hub.subscribe(topics.hub_ingest_subscription("keyop-hub"))
            assert hub.subscribe(topics.hub_status_subscription())
            for share in ROGUE_SHARES:
                assert acme.subscribe(share), share  # granted: acl_file does not check it
            for seq in range(1, 31):
                assert not edge7.publish(topics.up_events("edge-07"),
                                         make_event(seq)).is_failure
            # Not shared: it reaches the hub after every event the broker gave the hub.
            assert not edge7.publish(topics.up_status("edge-07"), b"{}").is_failure
            wait_until(lambda: topics.up_status("edge-07") in hub.topics(), "the status")
            events = [t for t in hub.topics() if t == topics.up_events("edge-07")]
            assert acme.messages == []
            assert 0 < len(events) < 30, len(events)  # the rest went to acme's turn: lost
        finally:
            for s in (hub, acme, edge7):
                s.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fmt", ["dynsec", "acl-file"])
def test_the_broker_refuses_payloads_over_the_size_limit(fmt: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert MAX_EVENT_BYTES <= MESSAGE_SIZE_LIMIT < 1024 * 1024
    with _broker_for(parse_config(CONFIG), out, fmt, tmp_path) as broker:
        hub = _login(broker, out, "hub", "keyop-hub")
        acme = _login(broker, out, "supplier", "acme")
        edge7 = _login(broker, out, "gateway", "edge-07")
        try:
            assert hub.subscribe(topics.hub_ingest_subscription("keyop-hub"))
            assert hub.subscribe(topics.hub_status_subscription())
            assert acme.subscribe(topics.sup_all("acme"))
            # Up to the limit passes, both ways.
            for size in (MAX_EVENT_BYTES, MESSAGE_SIZE_LIMIT):
                assert not edge7.publish(topics.up_events("edge-07"), b"x" * size).is_failure
                assert not hub.publish(topics.sup_events("acme", "WO-1"),
                                       b"y" * size).is_failure
            # A byte more is dropped. Mosquitto answers with reason 0x95 (packet too large),
            # which paho 2.2 takes for a malformed PUBACK: it drops the connection.
            for size in (MESSAGE_SIZE_LIMIT + 1, 1024 * 1024):
                sender = _login(broker, out, "gateway", "edge-08")
                info = sender.client.publish(topics.up_events("edge-08"), b"z" * size, qos=1)
                wait_until(lambda s=sender: bool(s.disconnects), f"{size} bytes refused")
                sender.client.loop_stop()
                assert info.mid not in sender.acks
            assert not edge7.publish(topics.up_status("edge-07"), b"{}").is_failure
            assert not hub.publish(topics.sup_alerts("acme"), b"{}").is_failure
            # After every message before them, to the same receiver.
            wait_until(lambda: topics.up_status("edge-07") in hub.topics()
                       and topics.sup_alerts("acme") in acme.topics(), "the markers")
            assert [len(m.payload) for m in hub.messages if m.topic.endswith("/events")] == [
                MAX_EVENT_BYTES, MESSAGE_SIZE_LIMIT]
            assert [len(m.payload) for m in acme.messages if m.topic.endswith("/WO-1")] == [
                MAX_EVENT_BYTES, MESSAGE_SIZE_LIMIT]
        finally:
            for s in (hub, acme, edge7):
                s.close()


# -- files and secrets ----------------------------------------------------------------------

def _with_acme_secret(tmp_path: Path, secret: Path) -> Path:
    path = tmp_path / "hub.yaml"
    path.write_text(CONFIG.replace("acme: {}", f"acme: {{mqtt_password_file: \"{secret}\"}}"))
    return path


def test_a_reused_secret_file_must_be_private(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "acme.secret"
    secret.write_text("a-supplier-secret-of-enough-length\n")
    path = _with_acme_secret(tmp_path, secret)
    out = tmp_path / "out"
    for mode in (0o640, 0o604, 0o620, 0o602):  # group or others may read or write it
        secret.chmod(mode)
        assert main(path, out) == 2
        assert f"{secret}: secret file has mode {mode:04o}" in capsys.readouterr().err
    secret.chmod(0o600)
    os.chown(secret, 65534, -1)  # someone else's (the tests run as root)
    assert main(path, out) == 2
    assert f"{secret}: secret file is owned by uid 65534" in capsys.readouterr().err
    os.chown(secret, os.geteuid(), -1)
    # A symbolic link, even to a private file of ours: refused, never followed.
    link = tmp_path / "link.secret"
    link.symlink_to(secret)
    assert main(_with_acme_secret(tmp_path, link), out) == 2
    assert f"{link}: cannot open secret file (a symbolic link" in capsys.readouterr().err
    # Nothing was written while refusing; a private regular file is read back.
    assert not (out / "dynamic-security.json").exists()
    assert main(_with_acme_secret(tmp_path, secret), out) == 0
    doc = json.loads((out / "dynamic-security.json").read_text())
    acme = next(c for c in doc["clients"] if c["username"] == "acme")
    salt = base64.b64decode(acme["salt"])
    assert base64.b64decode(acme["password"]) == hashlib.pbkdf2_hmac(
        "sha512", b"a-supplier-secret-of-enough-length", salt, PBKDF2_ITERATIONS)


@pytest.mark.parametrize("fmt", ["dynsec", "acl-file"])
def test_planted_links_are_never_written_through(fmt: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "secrets").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    # A link where a new secret is to be created, and in place of each output file.
    (out / "secrets" / "supplier-bolt.secret").symlink_to(victim)
    outputs = [*OUTPUTS[fmt], "mosquitto.conf", "api-keys.yaml"]
    for name in outputs:
        (out / name).symlink_to(victim)
    config = parse_config(CONFIG)
    with pytest.raises(HubConfigError, match=r"supplier-bolt\.secret: cannot open secret file"):
        write(config, out, fmt)
    (out / "secrets" / "supplier-bolt.secret").unlink()
    write(config, out, fmt)
    assert victim.read_text() == "untouched\n"
    for name in outputs:
        written = out / name
        assert not written.is_symlink() and written.is_file(), name
        mode = written.stat().st_mode & 0o777
        assert mode == (0o644 if name == "mosquitto.conf" else 0o600), (name, oct(mode))
    # No temporary file is left behind.
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_the_database_password_comes_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "db.password"
    secret.write_text("s3cret-pw\n")
    url = "postgresql+psycopg://keyop@db.example:5432/keyop"
    hub = parse_config(f'hub: {{database: "{url}", database_password_file: "{secret}"}}').hub
    applied = hub.database_url()
    assert sa.make_url(applied).password == "s3cret-pw"
    assert "s3cret-pw" not in sa.make_url(applied).render_as_string()
    assert hub.database == url  # the config itself never holds it
    for text, message in (
            (f'hub: {{database_password_file: "{secret}"}}',
             r"hub\.database_password_file: SQLite has no password"),
            (f'hub: {{database: "postgresql://u:pw@h/d", database_password_file: "{secret}"}}',
             r"hub\.database_password_file: hub\.database already holds a password")):
        with pytest.raises(HubConfigError, match=message):
            parse_config(text)
    with pytest.raises(HubConfigError, match=r"db\.missing: cannot read secret"):
        parse_config(f'hub: {{database: "{url}", database_password_file: '
                     f'"{tmp_path / "db.missing"}"}}').hub.database_url()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("hub_db_url", ["postgres"], indirect=True)  # SQLite has no password
def test_the_hub_logs_its_database_without_the_password(
        hub_db_url: str, broker: PrivateBroker, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:

    secret = tmp_path / "db.password"
    secret.write_text("never-in-a-log-1234\n")
    # The test server trusts loopback, so any password connects: what matters is where it shows.
    config = parse_config(
        f'hub: {{id: hub, database: "{hub_db_url}", database_password_file: "{secret}"}}\n'
        "api: {enabled: false}\nalerts: {enabled: false}\n"
        f"mqtt: {{host: {broker.host}, port: {broker.port}, client_id: keyop-hub-pw}}\n")
    with caplog.at_level(logging.DEBUG):
        hub = HubThread(config)
        try:
            hub.wait_subscribed()
            assert hub.service.store is not None
            assert hub.service.store.url.password == "never-in-a-log-1234"
        finally:
            hub.close()
    assert hub.error is None
    started = next(r for r in caplog.records if r.getMessage() == "hub started")
    assert "***" in started.database  # type: ignore[attr-defined]
    assert not any("never-in-a-log" in str(r.__dict__) for r in caplog.records)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("fmt", ["dynsec", "acl-file"])
def test_the_real_edge_and_hub_work_with_their_accounts(fmt: str, tmp_path: Path) -> None:
    """The edge's uplink (client id `keyop-edge-{id}`) and the hub, each logging in with the
    account `keyop hub acl` made for it: every packet stored and acknowledged."""
    import asyncio

    from factories import outbox_entry

    from edge_store import Outbox
    from sync.uplink import Uplink, UplinkConfig

    out, port = tmp_path / "out", free_port()
    config = _hub_yaml(out, port, tmp_path / "hub.db")
    with _broker_for(config, out, fmt, tmp_path, port) as broker:
        hub = HubThread(config)
        outbox = Outbox(tmp_path / "outbox.db", "plant1/edge-07")
        try:
            hub.wait_subscribed()
            n = 200
            outbox.append([outbox_entry(source="plant1/edge-07", good=i) for i in range(n)])
            uplink_config = UplinkConfig(
                host=broker.host, port=broker.port, gateway="edge-07", source="plant1/edge-07",
                username="edge-07", password=_secret(out, "gateway", "edge-07"))

            async def drain() -> bool:
                uplink = Uplink(uplink_config, outbox)
                task = asyncio.create_task(uplink.run())
                try:
                    return await uplink.wait_acked(n, 30)
                finally:
                    await asyncio.wait_for(uplink.stop(), 10)
                    await task

            assert asyncio.run(drain()), "the hub's acks reached the edge"
            assert outbox.stats().pending == 0
            assert hub.service.stored == n
        finally:
            outbox.close()
            hub.close()
    assert hub.error is None


@pytest.mark.timeout(90)
@pytest.mark.parametrize("fmt", ["dynsec", "acl-file"])
def test_a_gateway_reporting_for_another_site_is_dead_lettered(fmt: str,
                                                              tmp_path: Path) -> None:
    """The broker lets edge-08 publish only on its own topic; on it, hub.yaml's binding
    (site plant1) refuses a source of another site and equipment of another site."""
    import json


    out, port = tmp_path / "out", free_port()
    config = _hub_yaml(out, port, tmp_path / "hub.db")
    with _broker_for(config, out, fmt, tmp_path, port) as broker:
        edge8 = _login(broker, out, "gateway", "edge-08")
        hub = HubThread(config)
        try:
            hub.wait_subscribed()
            up = topics.up_events("edge-08")
            foreign_source = make_event(1, source="plant2/edge-08")
            foreign_path = json.loads(make_event(1, source="plant1/edge-08"))
            foreign_path["data"]["equipment"]["path"] = "plant2/body/line-1/press-1"
            own = make_event(2, source="plant1/edge-08")
            for body in (foreign_source, json.dumps(foreign_path).encode(), own):
                assert not edge8.publish(up, body).is_failure
            wait_until(lambda: hub.service.messages == 3, "three messages handled", 30)
            assert (hub.service.stored, hub.service.dead_letters) == (1, 2)
            store = hub.service.store
            assert store is not None
            reasons = [reason for _, reason, _ in store.list_dead_letters()]
            assert any("reports for site 'plant1'" in r and "not 'plant2'" in r for r in reasons)
            assert any("is not under site 'plant1'" in r for r in reasons)
            # The refused packet of its own source is settled: acknowledged up to seq 2.
            assert store.contiguous("plant1/edge-08", EPOCH) == 2
        finally:
            hub.close()
            edge8.close()
    assert hub.error is None
