"""The uplink and the hub over TLS (CA, client certificate, server name) and with a
username/password, against a real Mosquitto configured for each; credentials read from env
variables or a file."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest
from factories import outbox_entry

from common.mqtt_tls import Tls, TlsSettings
from devstack.mosquitto import PrivateBroker
from edge_store import Outbox
from gateway.config import CredentialsError, load_gateway_config
from hub.config import MqttSection
from hub.mqtt import HubMqtt
from sync import topics
from sync.uplink import Uplink, UplinkConfig

pytestmark = pytest.mark.timeout(60)

GATEWAY = "edge-07"
SOURCE = f"plant1/{GATEWAY}"
SERVER_NAME = "broker.keyop.test"


# Mosquitto started as root drops to the `mosquitto` user, which cannot read pytest's private
# temporary folders: keep root for these brokers (test-only certificates and passwords).
AS_ROOT = "user root\n"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a broker certificate for SERVER_NAME only (not 127.0.0.1), a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=keyop test CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    (d / "san.ext").write_text(f"subjectAltName=DNS:{SERVER_NAME}\n")
    for name, cn in (("server", SERVER_NAME), ("client", GATEWAY)):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        extra = ["-extfile", "san.ext"] if name == "server" else []
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", *extra, cwd=d)
    return d


def _until_connected(config: UplinkConfig, outbox: Outbox, wait: float) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        uplink = Uplink(config, outbox)
        task = asyncio.create_task(uplink.run())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while loop.time() < deadline and uplink.published_messages == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # a bounded poll of a counter
        result = {"connected": uplink.connected, "published": uplink.published_messages}
        await asyncio.wait_for(uplink.stop(), 10)
        await task
        return result

    return asyncio.run(main())


def _config(broker: PrivateBroker, **over: Any) -> UplinkConfig:
    return UplinkConfig(host=broker.host, port=broker.port, gateway=GATEWAY, source=SOURCE,
                        backoff_min_s=0.1, backoff_max_s=0.3, connect_timeout_s=3, **over)


def test_tls_with_client_certificate_and_server_name(pki: Path, tmp_path: Path) -> None:
    extra = AS_ROOT + (f"cafile {pki / 'ca.pem'}\ncertfile {pki / 'server.pem'}\n"
             f"keyfile {pki / 'server.key'}\nrequire_certificate true\n")
    with PrivateBroker(workdir=tmp_path / "broker", extra_config=extra) as broker, \
            Outbox(tmp_path / "o.db", SOURCE) as outbox:
        outbox.append([outbox_entry(source=SOURCE)])
        tls = Tls(ca_file=str(pki / "ca.pem"), cert_file=str(pki / "client.pem"),
                  key_file=str(pki / "client.key"), server_name=SERVER_NAME)
        ok = _until_connected(_config(broker, tls=tls), outbox, 10)
        assert ok["connected"] and ok["published"] >= 1, ok
        # The certificate names SERVER_NAME, not 127.0.0.1: without server_name the
        # host name check refuses the broker.
        wrong = Tls(ca_file=str(pki / "ca.pem"), cert_file=str(pki / "client.pem"),
                    key_file=str(pki / "client.key"))
        assert _until_connected(_config(broker, tls=wrong), outbox, 2)["published"] == 0
        # No client certificate: the broker refuses us.
        anonymous = Tls(ca_file=str(pki / "ca.pem"), server_name=SERVER_NAME)
        assert _until_connected(_config(broker, tls=anonymous), outbox, 2)["published"] == 0


def test_username_and_password_from_env_or_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), GATEWAY, "s3cret"],
                   check=True, capture_output=True)
    extra = AS_ROOT + f"allow_anonymous false\npassword_file {passwd}\n"
    config_file = tmp_path / "gateway.yaml"
    (tmp_path / "secret.txt").write_text("s3cret\n")
    with PrivateBroker(workdir=tmp_path / "broker", extra_config=extra) as broker, \
            Outbox(tmp_path / "o.db", SOURCE) as outbox:
        outbox.append([outbox_entry(source=SOURCE)])
        for mqtt_section in (
            {"username": GATEWAY, "password_file": "secret.txt"},
            {"username_env": "KEYOP_TEST_USER", "password_env": "KEYOP_TEST_PASSWORD"},
        ):
            monkeypatch.setenv("KEYOP_TEST_USER", GATEWAY)
            monkeypatch.setenv("KEYOP_TEST_PASSWORD", "s3cret")
            lines = "\n".join(f"  {k}: {v}" for k, v in mqtt_section.items())
            config_file.write_text(f"gateway: {{site: plant1, id: {GATEWAY}}}\nmqtt:\n{lines}\n")
            username, password = load_gateway_config(config_file).mqtt_credentials()
            assert (username, password) == (GATEWAY, "s3cret")
            ok = _until_connected(_config(broker, username=username, password=password),
                                  outbox, 10)
            assert ok["published"] >= 1, ok
        bad = _until_connected(_config(broker, username=GATEWAY, password="nope"), outbox, 2)
        assert bad["published"] == 0
    monkeypatch.delenv("KEYOP_TEST_PASSWORD")
    with pytest.raises(CredentialsError, match="KEYOP_TEST_PASSWORD"):
        load_gateway_config(config_file).mqtt_credentials()


def test_the_hub_over_tls_with_client_certificate_server_name_and_password_file(
        pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The hub's connection shares the edge's TLS: it subscribes, publishes and receives over
    it; a certificate check that fails is an unreachable broker, retried."""
    passwd = tmp_path / "passwd"
    secret = "hub-secret-0123456789"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "hub", secret],
                   check=True, capture_output=True)
    (tmp_path / "hub.secret").write_text(secret + "\n")
    extra = AS_ROOT + (f"cafile {pki / 'ca.pem'}\ncertfile {pki / 'server.pem'}\n"
             f"keyfile {pki / 'server.key'}\nrequire_certificate true\n"
             f"allow_anonymous false\npassword_file {passwd}\n")

    def section(port: int, server_name: str | None) -> MqttSection:
        tls = TlsSettings(ca_file=str(pki / "ca.pem"), cert_file=str(pki / "client.pem"),
                          key_file=str(pki / "client.key"), server_name=server_name)
        return MqttSection(host="127.0.0.1", port=port, client_id="hub-tls", username="hub",
                           password_file=str(tmp_path / "hub.secret"), tls=tls)

    async def round_trip(config: MqttSection) -> bytes:
        hub = HubMqtt(config, "hub-tls", asyncio.get_running_loop())
        hub.start()
        try:
            await asyncio.to_thread(hub.subscribed.wait, 10)
            assert hub.subscribed.is_set()
            # Its own ingest subscription hands the hub what it publishes on an up topic.
            await asyncio.wait_for(hub.publish(topics.up_events(GATEWAY), b"over tls"), 10)
            message = await asyncio.wait_for(hub.inbox.get(), 10)
            hub.ack([message])
            return message.payload
        finally:
            await hub.close(grace_s=1.0)

    async def refused(config: MqttSection) -> bool:
        hub = HubMqtt(config, "hub-tls", asyncio.get_running_loop())
        hub.start()
        try:
            await asyncio.sleep(1.5)
            return hub.subscribed.is_set()
        finally:
            await hub.close(grace_s=0.5)

    with PrivateBroker(workdir=tmp_path / "broker", extra_config=extra) as broker:
        assert asyncio.run(round_trip(section(broker.port, SERVER_NAME))) == b"over tls"
        # The certificate names SERVER_NAME, not 127.0.0.1.
        with caplog.at_level(logging.WARNING, logger="hub.mqtt"):
            assert not asyncio.run(refused(section(broker.port, None)))
        assert any("certificate" in str(getattr(r, "error", "")) for r in caplog.records
                   if r.getMessage().startswith("hub cannot reach"))
