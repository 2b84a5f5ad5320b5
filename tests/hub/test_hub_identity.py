"""One hub process per broker identity (hub/identity.py), and what the hub does when its broker
session is taken over anyway: real HubService instances, one database, a real Mosquitto."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hubkit import HubThread, wait_until

from devstack.mosquitto import PrivateBroker
from hub import identity
from hub.config import HubConfig, parse_config
from hub.identity import lease_names
from hub.service import main
from hub.store import Store

CLIENT_ID = "keyop-hub-twin"


def _config_text(broker: PrivateBroker, db: Path, client_id: str = CLIENT_ID) -> str:
    return (f'hub: {{id: hub, database: "sqlite:///{db}"}}\n'
            "api: {enabled: false}\nalerts: {enabled: false}\n"
            f"mqtt: {{host: {broker.host}, port: {broker.port}, client_id: {client_id}}}\n")


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The hub's own ERROR records (not a library's)."""
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR and r.name.startswith("hub")]


@pytest.fixture
def short_lease(monkeypatch: pytest.MonkeyPatch) -> float:
    ttl = 3.0
    monkeypatch.setattr(identity, "LEASE_TTL_S", ttl)
    return ttl


@pytest.mark.timeout(90)
def test_a_second_hub_with_the_same_client_id_refuses_to_start(
        broker: PrivateBroker, tmp_path: Path, short_lease: float,
        caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "hub.db"
    path = tmp_path / "hub.yaml"
    path.write_text(_config_text(broker, db))
    first = HubThread(parse_config(path.read_text()))
    try:
        first.wait_subscribed()
        name = lease_names(first.service.config.mqtt)[0]
        store = Store(f"sqlite:///{db}")
        holder = store.lease_holder(name)
        assert holder is not None and holder.startswith("hub pid ")
        # `keyop hub` with the same client id on the same database: exit code 2, one ERROR
        # naming the client id and the process that holds it; the first hub is untouched.
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert main(str(path)) == 2
        errors = _errors(caplog)
        assert len(errors) == 1, errors
        assert f"MQTT client id {CLIENT_ID!r} is in use" in errors[0] and holder in errors[0]
        # It waited for the lease (a dead holder's would have expired) and never connected.
        assert any(r.getMessage().startswith("hub identity in use") for r in caplog.records)
        assert not any(r.getMessage() == "hub connected to broker" for r in caplog.records)
        assert first.service.mqtt is not None and first.service.mqtt.takeovers == 0
        assert first.service.mqtt.client.is_connected() and store.lease_holder(name) == holder
    finally:
        first.close()
    assert first.error is None
    # Released on stop: the next hub with this client id starts at once.
    assert store.lease_holder(name) is None
    store.close()


@pytest.mark.timeout(60)
def test_a_lease_left_by_a_dead_hub_expires(broker: PrivateBroker, tmp_path: Path,
                                            short_lease: float) -> None:
    db = tmp_path / "hub.db"
    config = parse_config(_config_text(broker, db))
    store = Store(f"sqlite:///{db}")
    # A hub that died holding the client id: its lease runs out within one lease time.
    assert store.try_lease(lease_names(config.mqtt)[0], "hub pid 1 on gone", short_lease / 2)
    _starts(config)
    store.close()


def _starts(config: HubConfig) -> None:
    """The hub starts (subscribes) and stops without an error."""
    hub = HubThread(config)
    try:
        hub.wait_subscribed()
    finally:
        hub.close()
    assert hub.error is None


@pytest.mark.timeout(60)
def test_a_lease_of_a_killed_hub_on_this_host_is_taken_over_at_once(
        broker: PrivateBroker, tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    config = parse_config(_config_text(broker, db))
    store = Store(f"sqlite:///{db}")
    # A hub on this host that was killed (kill -9) holding the client id for a long lease.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = f"hub pid {dead.pid} on {socket.gethostname()} #0badcafe"
    assert store.try_lease(lease_names(config.mqtt)[0], holder, 3600)
    started = time.monotonic()
    _starts(config)
    assert time.monotonic() - started < 10, "waited for the dead holder's lease to expire"
    store.close()


def test_leases_name_the_client_id_and_the_username() -> None:
    mqtt_section = parse_config("mqtt: {client_id: a, username: keyop-hub}").mqtt
    assert lease_names(mqtt_section) == ["mqtt-client:a", "mqtt-user:keyop-hub"]
    long = parse_config(f"mqtt: {{client_id: {'c' * 128}}}").mqtt
    (name,) = lease_names(long)
    assert len(name) <= 64 and name.startswith("mqtt-client:sha256:")


@pytest.mark.timeout(90)
def test_two_hubs_fighting_over_a_client_id_say_so_and_slow_down(
        broker: PrivateBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Two databases, so the lease cannot see it: the broker hands the session to whichever
    # connected last, and Mosquitto 2.0.11 closes the other without a reason code.
    hubs: list[HubThread] = []
    try:
        with caplog.at_level(logging.INFO):
            for index in (1, 2):
                hubs.append(HubThread(parse_config(
                    _config_text(broker, tmp_path / f"hub{index}.db"))))
            wait_until(lambda: all(h.service.mqtt is not None and h.service.mqtt.takeovers
                                   for h in hubs), "both hubs report the takeover", 60)
        errors = _errors(caplog)
        assert len(errors) == 2, errors  # one per process
        assert all("taken over" in e and repr(CLIENT_ID) in e for e in errors)
        # Growing waits, not a reconnect a second: few connections in all.
        connects = [r for r in caplog.records if r.getMessage() == "hub connected to broker"]
        assert len(connects) <= 2 * 4, len(connects)
    finally:
        for hub in hubs:
            hub.close()
    assert all(hub.error is None for hub in hubs)
