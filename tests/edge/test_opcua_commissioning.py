"""Commissioning against a secured OPC UA server (the real asyncua simulator): a server that
rejects our client certificate, and a server certificate our trust folder refuses, are each
named once per outage, with the certificate's thumbprints and where to act on it."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from edgekit import Collector, arun

from devstack.mosquitto import free_port
from drivers.base import Quality
from drivers.opcua import OpcUaDeviceConfig, OpcUaDriver, OpcUaSecurity, OpcUaSignal
from drivers.opcua_security import connect_reason
from gateway.config import (
    ApiSettings,
    GatewayConfig,
    GatewaySettings,
    Identity,
    MqttSettings,
    OutboxSettings,
)
from gateway.devices import build_drivers
from gateway.runtime import Gateway
from mapping.load import load_mapping
from simulators.opcua_plc import OpcUaPlc, generate_certificate

ROOT = Path(__file__).resolve().parents[2]

FAST = dict(timeout_s=2.0, keepalive_s=0.3, backoff_initial_s=0.05, backoff_max_s=0.1)


def prints(der: Path) -> str:
    data = der.read_bytes()  # DER files: the thumbprint is the hash of the file itself
    return (f"SHA-1 {hashlib.sha1(data).hexdigest().upper()}, "
            f"SHA-256 {hashlib.sha256(data).hexdigest().upper()}")


def secured_plc(pki: Path) -> tuple[OpcUaPlc, Path, Path]:
    """A PLC that trusts one client certificate, which is not ours; ours (cert, key)."""
    cert, key = generate_certificate(pki / "client", "keyop-client", "urn:keyop:gateway",
                                     server=False)
    stranger, _ = generate_certificate(pki / "stranger", "stranger", "urn:elsewhere:hmi",
                                       server=False)
    (pki / "server" / "trusted-clients").mkdir(parents=True)
    shutil.copy(stranger, pki / "server" / "trusted-clients")
    return OpcUaPlc(security_dir=pki / "server", trust_clients=True), cert, key


def test_a_server_rejecting_our_certificate_is_named_once_with_its_thumbprint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plc, cert, key = secured_plc(tmp_path / "pki")

    async def body() -> None:
        await plc.start()
        security = OpcUaSecurity("Basic256Sha256", "SignAndEncrypt", str(cert), str(key), None)
        driver = OpcUaDriver(OpcUaDeviceConfig(
            "plc-1", plc.endpoint, (OpcUaSignal("w.busy", plc.node_id("W1", "Busy"), 0.05),),
            security=security, **FAST))  # type: ignore[arg-type]
        col = Collector(driver)  # type: ignore[arg-type]
        try:
            deadline = time.monotonic() + 30
            while driver.connect_failures < 3:  # retried three times
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        finally:
            await col.close()
            await plc.close()
        (sample,) = col.samples  # one BAD sample for the outage, then quiet
        assert sample.quality is Quality.BAD
        assert sample.reason == (
            f"security: {plc.endpoint} rejected keyop's client certificate: "
            f"BadCertificateUntrusted; trust keyop's certificate {cert} ({prints(cert)}) on "
            "the server, e.g. in its trusted clients list")

    with caplog.at_level(logging.INFO):
        arun(body, timeout=60)
    ours = [r for r in caplog.records if r.name == "drivers.opcua"]
    assert [r.levelno for r in ours] == [logging.ERROR], "once per outage"
    client_side = [r for r in caplog.records
                   if not r.name.startswith(("asyncua.server", "asyncuagds"))]
    assert not [r for r in client_side if r.exc_info], "no traceback on our side"


def test_the_assert_asyncua_raises_on_a_refused_secure_channel_is_named(tmp_path: Path) -> None:
    """A server that answers OpenSecureChannel with a fault (node-opcua, many PLCs) makes
    asyncua fail on an assert; asyncua's server refuses later, so this is the reason alone."""
    cert, key = generate_certificate(tmp_path, "keyop-client", "urn:keyop:gateway",
                                     server=False)
    sec = OpcUaSecurity("Basic256Sha256", "Sign", str(cert), str(key), None)
    assert connect_reason(AssertionError(), endpoint="opc.tcp://plc:4840", timeout_s=1.0,
                          sec=sec) == (
        "security: opc.tcp://plc:4840 refused the secure channel (most often: it rejects "
        f"keyop's client certificate); trust keyop's certificate {cert} ({prints(cert)}) on "
        "the server, e.g. in its trusted clients list")


def test_a_server_certificate_we_refuse_is_worded_as_ours(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    plc, cert, key = secured_plc(pki)
    shutil.copy(cert, pki / "server" / "trusted-clients")  # the server trusts us
    other = pki / "trust"
    another, _ = generate_certificate(pki / "another", "another-plc", "urn:elsewhere:plc",
                                      server=True)
    other.mkdir()
    shutil.copy(another, other)

    async def body() -> None:
        await plc.start()
        assert plc.server_cert is not None
        security = OpcUaSecurity("Basic256Sha256", "SignAndEncrypt", str(cert), str(key),
                                 str(other))
        driver = OpcUaDriver(OpcUaDeviceConfig(
            "plc-1", plc.endpoint, (OpcUaSignal("w.busy", plc.node_id("W1", "Busy"), 0.05),),
            security=security, **FAST))  # type: ignore[arg-type]
        col = Collector(driver)  # type: ignore[arg-type]
        try:
            await col.wait_for(lambda s: len(s) >= 1, timeout=30)
        finally:
            await col.close()
            await plc.close()
        (sample,) = col.samples
        assert sample.reason == (
            f"security: keyop does not trust the server certificate of {plc.endpoint} "
            f"({prints(plc.server_cert)}): BadCertificateUntrusted; to trust it, copy the "
            f"server's certificate into the trust folder {other}")

    arun(body, timeout=60)


def secured_mapping(tmp_path: Path, plc: OpcUaPlc, cert: Path, key: Path) -> Path:
    """The example OPC UA mapping, pointed at `plc` with our certificate and no trust folder."""
    text = (ROOT / "config" / "mapping-opcua.yaml").read_text()
    text = text.replace("opc.tcp://127.0.0.1:4840/keyop/plc", plc.endpoint).replace(
        "    timeout: 4s\n", f"    timeout: 2s\n    security: {{policy: Basic256Sha256, mode: "
        f"SignAndEncrypt, certificate: {cert}, private_key: {key}}}\n")
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(text)
    return mapping


def test_the_gateway_status_names_the_rejected_certificate(tmp_path: Path) -> None:
    plc, cert, key = secured_plc(tmp_path / "pki")

    async def body() -> dict[str, object]:
        await plc.start()
        mapping = secured_mapping(tmp_path, plc, cert, key)
        doc, compiled = load_mapping(mapping)
        drivers = build_drivers(doc, compiled)
        settings = GatewaySettings(
            gateway=Identity(site="plant1", id="gw-cert"), mapping=str(mapping),
            outbox=OutboxSettings(path=str(tmp_path / "outbox.db")),
            mqtt=MqttSettings(port=free_port()), api=ApiSettings(port=0))
        gateway = Gateway(GatewayConfig(tmp_path / "gateway.yaml", settings), compiled,
                          drivers)
        stop = asyncio.Event()
        running = asyncio.create_task(gateway.run(stop))
        try:
            deadline = time.monotonic() + 20
            while gateway.api_port is None or "plc-1" not in gateway.device_fault:
                assert time.monotonic() < deadline and not running.done()
                await asyncio.sleep(0.05)
            async with httpx.AsyncClient(timeout=10) as client:
                answer = await client.get(f"http://127.0.0.1:{gateway.api_port}/api/status")
            return dict(answer.json())
        finally:
            stop.set()
            await asyncio.wait_for(running, 15)
            await plc.close()

    threshold = gc.get_threshold()
    try:
        status = arun(body, timeout=60)
    finally:  # the gateway tunes the collector for its process; this one goes on testing
        gc.unfreeze()
        gc.set_threshold(*threshold)
    assert status["devices"] == [{
        "name": "plc-1", "up": False,
        "fault": f"security: {plc.endpoint} rejected keyop's client certificate: "
                 f"BadCertificateUntrusted; trust keyop's certificate {cert} ({prints(cert)}) "
                 "on the server, e.g. in its trusted clients list"}]


def test_record_fails_when_a_source_never_delivered(tmp_path: Path) -> None:
    plc, cert, key = secured_plc(tmp_path / "pki")
    started = threading.Event()
    loop_box: list[asyncio.AbstractEventLoop] = []
    stop_box: list[asyncio.Event] = []

    async def serve() -> None:
        loop_box.append(asyncio.get_running_loop())
        stop_box.append(asyncio.Event())
        await plc.start()
        started.set()
        await stop_box[0].wait()
        await plc.close()

    server = threading.Thread(target=asyncio.run, args=(serve(),))
    server.start()
    try:
        assert started.wait(30)
        mapping = secured_mapping(tmp_path, plc, cert, key)
        config = tmp_path / "gateway.yaml"
        config.write_text(f"gateway: {{site: plant1, id: edge-07}}\nmapping: {mapping}\n"
                          f"outbox: {{path: {tmp_path / 'outbox.db'}}}\n")
        out = tmp_path / "samples.jsonl"
        done = subprocess.run(
            [sys.executable, "-m", "cli", "record", "-c", str(config), "--out", str(out),
             "--duration", "3"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    finally:
        if loop_box:
            loop_box[0].call_soon_threadsafe(stop_box[0].set)
        server.join(30)
    assert done.returncode == 1, done.stderr
    assert (f"no usable sample from plc-1: security: {plc.endpoint} rejected keyop's client "
            "certificate: BadCertificateUntrusted") in done.stderr
    assert "Traceback" not in done.stderr


def test_a_reconnect_cycle_logs_one_keyop_line_each_way_and_no_asyncua_traceback(
    caplog: pytest.LogCaptureFixture
) -> None:
    plc = OpcUaPlc()

    async def body() -> int:
        await plc.start()
        driver = OpcUaDriver(OpcUaDeviceConfig(
            "plc-1", plc.endpoint, (OpcUaSignal("w.good", plc.node_id("W1", "PartCount"), 0.05),),
            **FAST))  # type: ignore[arg-type]
        col = Collector(driver)  # type: ignore[arg-type]
        station = plc.stations["W1"]
        try:
            await col.wait_for(lambda s: any(x.good for x in s), timeout=15)
            folded = driver._fold.folded
            await plc.stop()  # the PLC goes off with a publish request pending
            await col.wait_for(lambda s: not s[-1].good, timeout=15)
            deadline = time.monotonic() + 15
            while driver.connect_failures < 3:  # and stays off for a few attempts
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            station.count_good()
            await plc.start()
            await col.wait_for(lambda s: s[-1].good and s[-1].value == 1, timeout=15)
            return driver._fold.folded - folded
        finally:
            await col.close()
            await plc.close()

    with caplog.at_level(logging.WARNING):
        folded = arun(body, timeout=60)
    client_side = [r for r in caplog.records
                   if not r.name.startswith(("asyncua.server", "asyncuagds"))]
    assert [(r.name, r.levelno) for r in client_side] == [("drivers.opcua", logging.ERROR)]
    assert not [r for r in client_side if r.exc_info]
    assert folded > 0, "asyncua did log about the outage: folded, not shown"
