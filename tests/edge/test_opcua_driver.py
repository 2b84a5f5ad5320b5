"""The OPC UA driver against the simulated PLC: subscriptions, polling, restarts, security.

Real sockets on 127.0.0.1; each test starts its own PLC (asyncua's server takes ~3 s to build
its address space, so the tests are few and each covers several behaviours).
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest
from asyncua import ua
from edgekit import Collector, arun, good_values

from devstack.mosquitto import free_port
from drivers.base import ConfigError, DriverCounters, Quality, Sample, sample_batches
from drivers.opcua import OpcUaDeviceConfig, OpcUaDriver, OpcUaSecurity, OpcUaSignal
from drivers.opcua_nodes import parse_node, quality_of
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
from simulators.scenario import Scenario, WorkOrder, run
from simulators.tcp_relay import TcpRelay

FAST = dict(timeout_s=1.0, keepalive_s=0.3, backoff_initial_s=0.1, backoff_max_s=0.5)


def driver_for(plc: OpcUaPlc, *signals: OpcUaSignal, **options: object) -> OpcUaDriver:
    settings = {**FAST, **options}
    return OpcUaDriver(OpcUaDeviceConfig("plc-1", plc.endpoint, signals, **settings))  # type: ignore[arg-type]


def bad(samples: list[Sample], signal: str) -> list[Sample]:
    return [s for s in samples if s.signal == signal and s.quality is Quality.BAD]


def test_subscription_values_timestamps_missing_nodes_status_and_restart() -> None:
    async def body() -> None:
        plc = OpcUaPlc(seed=1)
        await plc.start()
        signals = (
            OpcUaSignal("w.busy", plc.node_id("W1", "Busy"), 0.05, 0.0),
            OpcUaSignal("w.good", "/Objects/2:Line3/2:W1/2:PartCount", 0.05, queue_size=50),
            OpcUaSignal("w.scrap", plc.node_id("W1", "RejectCount"), 0.05, queue_size=50),
            OpcUaSignal("w.current", plc.node_id("W1", "Current"), 0.05, deadband=50.0),
            OpcUaSignal("w.ghost", "ns=2;s=Line3.W1.Ghost", 0.05),
            OpcUaSignal("w.lost", "/Objects/2:Line3/2:W9/2:Busy", 0.05),
        )
        driver = driver_for(plc, *signals)
        col = Collector(driver)  # type: ignore[arg-type]
        station = plc.stations["W1"]
        try:
            await col.wait_for(lambda s: {"w.busy", "w.good", "w.scrap"} <= good_values(s).keys())
            # Missing nodes: one clear BAD sample each, naming the signal and the node.
            (ghost,) = bad(col.samples, "w.ghost")
            assert ghost.reason == (f"node_missing: signal 'w.ghost': node "
                                    f"'ns=2;s=Line3.W1.Ghost' not found on {plc.endpoint} "
                                    "(BadNodeIdUnknown)")
            (lost,) = bad(col.samples, "w.lost")
            assert lost.reason is not None and "'/Objects/2:Line3/2:W9/2:Busy'" in lost.reason

            # A scenario run: every counter step arrives (queue), with source timestamps.
            scenario = Scenario(orders=(WorkOrder(7, 6),), cycle_s=0.03, cycle_jitter_s=0.01,
                                changeover_s=0.05, seed=4)
            before = time.time()
            truth = await run(station, scenario)
            done = {"w.good": station.good, "w.scrap": station.scrap, "w.busy": False}
            await col.wait_for(lambda s: done.items() <= good_values(s).items())
            goods = [s.value for s in col.samples if s.signal == "w.good" and s.good]
            assert goods == list(range(0, station.good + 1)), "no counter step lost"
            assert len(truth.cycles()) == station.good + station.scrap
            fresh = [s for s in col.samples if s.good and s.signal == "w.good" and s.value]
            assert all(before - 0.5 <= s.time <= time.time() for s in fresh)
            # Deadband 50 A: the 180 A current is reported, its +-5 A noise is not.
            currents = [s.value for s in col.samples if s.signal == "w.current" and s.good]
            assert len(currents) <= 3 and any(c and c > 100 for c in currents)

            # Bad status from the PLC: BAD quality with the status name.
            plc.bad_status = ua.StatusCodes.BadDeviceFailure
            station.set_busy(True)
            await col.wait_for(lambda s: bool(bad(s, "w.busy")))
            assert bad(col.samples, "w.busy")[-1].reason == "opcua_status: BadDeviceFailure"
            plc.bad_status = None

            # Server off: one comm_lost per signal; back on: data flows, items recreated.
            await plc.stop()
            names = {"w.busy", "w.good", "w.scrap", "w.current"}
            await col.wait_for(lambda s: names <= {
                x.signal for x in s if x.reason and x.reason.startswith("comm_lost")})
            station.count_good()  # the PLC keeps counting while its network is down
            seen = len(col.samples)
            await plc.start()
            await col.wait_for(lambda s: any(
                x.signal == "w.good" and x.value == station.good and x.good for x in s[seen:]),
                timeout=10)
            assert driver.reconnects == 1
            lost_samples = [s for s in col.samples if s.reason and "comm_lost" in s.reason]
            assert sorted(s.signal for s in lost_samples) == sorted(names), "once per signal"
            assert len(bad(col.samples, "w.ghost")) == 1, "missing node reported once"
        finally:
            await col.close()
            await plc.close()

    arun(body, timeout=45)


def test_poll_mode_reads_on_deadlines_and_a_dead_server_is_named() -> None:
    async def body() -> None:
        plc = OpcUaPlc()
        await plc.start()
        driver = driver_for(plc, OpcUaSignal("a.order", plc.node_id("A1", "Order"), 0.05),
                            OpcUaSignal("a.planned", "/Objects/2:Line3/2:A1/2:Planned", 0.05),
                            mode="poll")
        col = Collector(driver)  # type: ignore[arg-type]
        try:
            plc.stations["A1"].set_order(4711, 12)
            await col.wait_for(lambda s: good_values(s) == {"a.order": 4711, "a.planned": 12})
            count = len(col.samples)
            await asyncio.sleep(0.5)
            polls = (len(col.samples) - count) / 2
            assert 5 <= polls <= 12, "about one read per 50 ms, no burst"
        finally:
            await col.close()
            await plc.close()
        # Nobody listens any more: a named refusal, once per signal.
        refused = driver_for(plc, OpcUaSignal("x", "ns=2;i=1", 0.05))
        col = Collector(refused)  # type: ignore[arg-type]
        await col.wait_for(lambda s: len(s) >= 1)
        await asyncio.sleep(0.3)
        await col.close()
        assert len(col.samples) == 1 and col.samples[0].reason is not None
        assert col.samples[0].reason.startswith("comm_lost: ")
        assert refused.connect_failures >= 2

    arun(body, timeout=30)


def test_username_and_password_are_checked_by_the_server() -> None:
    async def body() -> dict[str, str | None]:
        plc = OpcUaPlc(users={"keyop": "s3cret"})
        await plc.start()
        signal = OpcUaSignal("w.busy", plc.node_id("W1", "Busy"), 0.05)
        reasons: dict[str, str | None] = {}
        try:
            for case, user, password in (("right", "keyop", "s3cret"),
                                         ("wrong", "keyop", "guess"), ("anonymous", None, None)):
                col = Collector(driver_for(plc, signal, username=user,  # type: ignore[arg-type]
                                           password=password))
                await col.wait_for(lambda s: len(s) >= 1)
                await col.close()
                reasons[case] = col.samples[0].reason
        finally:
            await plc.close()
        return reasons

    reasons = arun(body, timeout=30)
    assert reasons["right"] is None
    assert reasons["wrong"] is not None and reasons["wrong"].startswith("auth: ")
    assert "BadUserAccessDenied" in reasons["wrong"]
    assert reasons["anonymous"] is not None and reasons["anonymous"].startswith("auth: ")


@pytest.mark.parametrize("policy", ["Basic256Sha256", "Aes256Sha256RsaPss"])
def test_sign_and_encrypt_works_and_an_untrusted_server_is_refused(
    tmp_path: Path, policy: str
) -> None:
    pki = tmp_path / "pki"
    client_cert, client_key = generate_certificate(pki / "client", "keyop-client",
                                                   "urn:keyop:gateway", server=False)

    async def body() -> None:
        plc = OpcUaPlc(security_dir=pki / "server", trust_clients=True)
        assert plc.server_cert is not None
        trusted, other, empty = pki / "trusted", pki / "other", pki / "empty"
        empty.mkdir()
        trusted.mkdir()
        shutil.copy(plc.server_cert, trusted)
        other.mkdir()
        another, _ = generate_certificate(pki / "another", "another-plc", "urn:elsewhere:plc",
                                          server=True)
        shutil.copy(another, other)
        (pki / "server" / "trusted-clients").mkdir()
        shutil.copy(client_cert, pki / "server" / "trusted-clients")
        await plc.start()
        signal = OpcUaSignal("w.busy", plc.node_id("W1", "Busy"), 0.05)
        try:
            for mode in ("SignAndEncrypt", "Sign"):
                secure = OpcUaSecurity(policy, mode, str(client_cert), str(client_key),
                                       str(trusted))
                col = Collector(driver_for(plc, signal, security=secure,  # type: ignore[arg-type]
                                           timeout_s=4.0))
                plc.stations["W1"].set_busy(mode == "Sign")
                await col.wait_for(lambda s, m=mode: good_values(s).get("w.busy") == (m == "Sign"),
                                   timeout=15)
                await col.close()

            reasons = {}
            for folder in (other, empty):
                untrusting = OpcUaSecurity(policy, "SignAndEncrypt", str(client_cert),
                                           str(client_key), str(folder))
                refused = driver_for(plc, signal, security=untrusting, timeout_s=4.0)
                col = Collector(refused)  # type: ignore[arg-type]
                await col.wait_for(lambda s: len(s) >= 1, timeout=15)
                await col.close()
                (sample,) = col.samples
                assert sample.quality is Quality.BAD
                reasons[folder] = sample.reason
            assert reasons[other] is not None and reasons[other].startswith(
                f"security: keyop does not trust the server certificate of {plc.endpoint} ")
            assert reasons[empty] == (f"security: {plc.endpoint}: trust folder {empty} holds no "
                                      "certificate (.der or .pem): no server can be trusted")
        finally:
            await plc.close()

    arun(body, timeout=60)


def test_config_errors_name_the_signal_and_the_field() -> None:
    with pytest.raises(ConfigError, match=r"signal 'x': node 'ns=2;q=1': expected a NodeId"):
        parse_node("x", "ns=2;q=1")
    with pytest.raises(ConfigError, match=r"path element '2:': expected ns:Name"):
        parse_node("x", "/Objects/2:")
    assert parse_node("x", "/Objects/Server").path == (ua.QualifiedName("Server", 0),)
    with pytest.raises(ConfigError, match="None goes with None"):
        OpcUaDriver(OpcUaDeviceConfig("p", "opc.tcp://h:4840", (),
                                      security=OpcUaSecurity("Basic256Sha256", "None")))
    with pytest.raises(ConfigError, match="needs certificate and private_key"):
        OpcUaDriver(OpcUaDeviceConfig("p", "opc.tcp://h:4840", (),
                                      security=OpcUaSecurity("Basic256Sha256", "Sign")))
    with pytest.raises(ConfigError, match=r"endpoint 'http://h': expected opc\.tcp"):
        OpcUaDriver(OpcUaDeviceConfig("p", "http://h", ()))
    assert quality_of(ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue)) == (
        Quality.UNCERTAIN, "opcua_status: UncertainLastUsableValue")
    assert quality_of(ua.StatusCode(ua.StatusCodes.Good)) == (Quality.GOOD, None)


def test_a_silent_server_is_caught_by_the_keep_alive_and_data_flows_after() -> None:
    async def body() -> None:
        plc = OpcUaPlc()
        await plc.start()
        relay = await TcpRelay(plc.port).start()
        endpoint = plc.endpoint.replace(f":{plc.port}/", f":{relay.port}/")
        driver = OpcUaDriver(OpcUaDeviceConfig(
            "plc-1", endpoint, (OpcUaSignal("w.good", plc.node_id("W1", "PartCount"), 0.05),),
            **FAST))  # type: ignore[arg-type]
        col = Collector(driver)  # type: ignore[arg-type]
        station = plc.stations["W1"]
        try:
            await col.wait_for(lambda s: good_values(s).get("w.good") == 0)
            relay.cut = True  # no FIN, no RST: only the keep-alive can tell
            cut_at = asyncio.get_running_loop().time()
            await col.wait_for(lambda s: any(not x.good for x in s), timeout=10)
            detected = asyncio.get_running_loop().time() - cut_at
            (lost,) = [s for s in col.samples if not s.good]
            assert lost.reason is not None and lost.reason.startswith("comm_lost: ")
            assert detected < 5 * FAST["keepalive_s"] + FAST["timeout_s"]
            station.count_good()
            relay.cut = False
            await col.wait_for(lambda s: good_values(s).get("w.good") == 1, timeout=15)
        finally:
            await col.close()
            await relay.close()
            await plc.close()

    arun(body, timeout=45)


def _grew(before: DriverCounters, after: DriverCounters) -> bool:
    """Every figure of `after` is at least that of `before` (counters only grow)."""
    pairs = [(before.requests, after.requests), (before.overruns, after.overruns),
             (before.reconnects, after.reconnects), (before.good_samples, after.good_samples),
             (before.bad_samples, after.bad_samples)]
    pairs += [(count, after.errors.get(k, 0)) for k, count in before.errors.items()]
    pairs += [(count, after.extra[k]) for k, count in before.extra.items()]
    return all(a <= b for a, b in pairs)


def test_counters_follow_notifications_a_cut_connection_and_the_reconnect() -> None:
    async def body() -> None:
        plc = OpcUaPlc()
        await plc.start()
        relay = await TcpRelay(plc.port).start()
        endpoint = plc.endpoint.replace(f":{plc.port}/", f":{relay.port}/")
        signals = (OpcUaSignal("w.good", plc.node_id("W1", "PartCount"), 0.05, queue_size=50),
                   OpcUaSignal("w.busy", plc.node_id("W1", "Busy"), 0.05),
                   OpcUaSignal("w.ghost", "ns=2;s=Line3.W1.Ghost", 0.05))
        driver = OpcUaDriver(OpcUaDeviceConfig("plc-1", endpoint, signals, **FAST))  # type: ignore[arg-type]
        col = Collector(driver)  # type: ignore[arg-type]
        station = plc.stations["W1"]

        def quality_counts() -> tuple[int, int]:
            good = sum(1 for s in col.samples if s.good)
            return good, len(col.samples) - good

        try:
            await col.wait_for(lambda s: good_values(s) == {"w.good": 0, "w.busy": False})
            await asyncio.sleep(0.3)  # nothing changes on its own: the stream is quiet
            first = driver.counters()
            assert first.device == "plc-1" and first.protocol == "opcua"
            assert first.requests > 0, "session setup, resolution, subscription, publishes"
            assert first.errors == {"node_missing": 1}
            assert (first.good_samples, first.bad_samples) == quality_counts() == (2, 1)
            assert first.reconnects == 0 and first.overruns == 0
            assert first.extra == {
                "connects": 1, "connect_failures": 0, "sessions_lost": 0, "notifications": 2,
                "status_changes": 0, "dropped": 0, "queue_overflows": 0, "polls": 0,
                "uncertain_samples": 0, "lost_samples": 0}

            # Three data changes: three notifications, three good samples.
            for _ in range(3):
                station.count_good()
            await col.wait_for(lambda s: good_values(s).get("w.good") == 3)
            counted = driver.counters()
            assert counted.extra["notifications"] == 5
            assert (counted.good_samples, counted.bad_samples) == quality_counts() == (5, 1)
            assert _grew(first, counted) and counted.requests > first.requests

            # Cut (half-open): the keep-alive ends the session; one lost sample per live
            # signal (the ghost is reported already); connects time out while it lasts.
            relay.cut = True
            await col.wait_for(lambda s: any(x.reason and x.reason.startswith("comm_lost")
                                             for x in s), timeout=10)
            deadline = asyncio.get_running_loop().time() + 15
            while driver.counters().extra["connect_failures"] < 1:
                assert asyncio.get_running_loop().time() < deadline, "no failed connect"
                await asyncio.sleep(0.05)
            cut = driver.counters()
            assert cut.extra["sessions_lost"] == 1 and cut.extra["lost_samples"] == 2
            assert cut.errors.get("comm_lost", 0) >= 1
            assert _grew(counted, cut)

            # Back: a reconnect, the ghost looked up (and missed) again, data flows.
            station.count_good()
            relay.cut = False
            await col.wait_for(lambda s: good_values(s).get("w.good") == 4, timeout=15)
            await asyncio.sleep(0.3)
            back = driver.counters()
            assert back.reconnects == 1 and back.extra["connects"] == 2
            assert back.errors["node_missing"] == 2
            failures = back.extra["connect_failures"] + back.extra["sessions_lost"]
            assert back.error_total - back.errors["node_missing"] == failures
            assert set(back.errors) <= {"node_missing", "comm_lost", "comm_timeout"}
            assert back.extra["lost_samples"] == 2, "reported once, however long the cut"
            good, not_good = quality_counts()
            assert (back.good_samples, back.bad_samples) == (good, not_good) == (good, 3)
            assert back.extra["notifications"] == good, "every notification a good sample"
            assert _grew(cut, back)
        finally:
            await col.close()
            await relay.close()
            await plc.close()

    arun(body, timeout=60)


def test_poll_mode_counts_polls_and_bad_values() -> None:
    async def body() -> tuple[DriverCounters, list[Sample]]:
        plc = OpcUaPlc()
        await plc.start()
        driver = driver_for(plc, OpcUaSignal("a.order", plc.node_id("A1", "Order"), 0.05),
                            OpcUaSignal("a.busy", plc.node_id("A1", "Busy"), 0.05), mode="poll")
        col = Collector(driver)  # type: ignore[arg-type]
        try:
            await col.wait_for(lambda s: len(s) >= 6)
            plc.bad_status = ua.StatusCodes.BadDeviceFailure
            plc.stations["A1"].set_busy(True)
            await col.wait_for(lambda s: bool(bad(s, "a.busy")))
        finally:
            await col.close()
            plc.bad_status = None
            await plc.close()
        return driver.counters(), col.samples

    counters, samples = arun(body, timeout=30)
    bad_ones = sum(1 for s in samples if not s.good)
    assert bad_ones >= 1 and counters.bad_samples >= bad_ones
    # Two samples a Read; a closing driver may have made a batch nobody took.
    assert len(samples) // 2 <= counters.extra["polls"] <= len(samples) // 2 + 1
    assert counters.good_samples + counters.bad_samples >= len(samples)
    assert counters.extra["notifications"] == 0 and counters.extra["connects"] == 1


def test_batches_are_the_samples_of_a_burst_in_the_order_of_samples() -> None:
    async def body() -> tuple[list[Sequence[Sample]], list[Sample]]:
        plc = OpcUaPlc(seed=3)
        await plc.start()
        signals = (OpcUaSignal("w.good", plc.node_id("W1", "PartCount"), 0.1, queue_size=50),
                   OpcUaSignal("w.scrap", plc.node_id("W1", "RejectCount"), 0.1, queue_size=50),
                   OpcUaSignal("w.busy", plc.node_id("W1", "Busy"), 0.1, queue_size=50),
                   OpcUaSignal("w.ghost", "ns=2;s=Line3.W1.Ghost", 0.1))
        by_batch, by_sample = driver_for(plc, *signals), driver_for(plc, *signals)
        batches: list[Sequence[Sample]] = []
        col = Collector(by_sample)  # type: ignore[arg-type]

        async def take() -> None:
            async for batch in sample_batches(by_batch):  # the runtime's way in
                batches.append(batch)

        taker = asyncio.create_task(take())
        station = plc.stations["W1"]

        def flat() -> list[Sample]:
            return [s for b in batches for s in b]

        try:
            for done in (lambda: flat(), lambda: col.samples):
                deadline = time.monotonic() + 10
                while good_values(done()).get("w.busy") is not False:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
            # Changes land in the same publishing interval: several samples a burst.
            for _ in range(3):
                station.set_busy(True)
                station.count_good()
                station.count_scrap()
                station.set_busy(False)
                await asyncio.sleep(0.25)
            want = {"w.good": 3, "w.scrap": 3, "w.busy": False}
            await col.wait_for(lambda s: want.items() <= good_values(s).items())
            deadline = time.monotonic() + 10
            while not want.items() <= good_values(flat()).items():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
        finally:
            await col.close()
            await by_batch.close()
            await asyncio.wait_for(taker, 3)
            await plc.close()
        return batches, col.samples

    batches, samples = arun(body, timeout=40)

    def seen(items: Sequence[Sample]) -> list[tuple[object, ...]]:
        # Two sessions: all is the same but the receive clock (and the time of the samples
        # the driver makes itself, which is that clock's).
        return [(s.signal, s.value, s.quality, s.time if s.good else None, s.reason)
                for s in items]

    flat = [s for b in batches for s in b]
    assert seen(flat) == seen(samples)
    assert all(isinstance(b, list) and b for b in batches)
    assert max(len(b) for b in batches) > 1, "a burst is handed over at once"
    for batch in batches:  # one burst, one receive time
        assert len({s.monotonic for s in batch}) == 1


def test_a_running_gateway_exports_the_opcua_counters(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]

    async def body() -> str:
        plc = OpcUaPlc(seed=2)
        await plc.start()
        text = (root / "config" / "mapping-opcua.yaml").read_text()
        mapping = tmp_path / "mapping.yaml"
        mapping.write_text(text.replace("opc.tcp://127.0.0.1:4840/keyop/plc", plc.endpoint))
        doc, compiled = load_mapping(mapping)
        drivers = build_drivers(doc, compiled)
        (driver,) = drivers
        assert isinstance(driver, OpcUaDriver)
        settings = GatewaySettings(
            gateway=Identity(site="plant1", id="gw-opcua"), mapping=str(mapping),
            outbox=OutboxSettings(path=str(tmp_path / "outbox.db")),
            mqtt=MqttSettings(port=free_port()),  # no broker: packets wait in the outbox
            api=ApiSettings(port=0))
        gateway = Gateway(GatewayConfig(tmp_path / "gateway.yaml", settings), compiled,
                          drivers)
        stop = asyncio.Event()
        running = asyncio.create_task(gateway.run(stop))
        try:
            deadline = time.monotonic() + 15
            while gateway.api_port is None or driver.notifications < 5:
                assert time.monotonic() < deadline and not running.done()
                await asyncio.sleep(0.05)
            url = f"http://127.0.0.1:{gateway.api_port}/metrics"
            while True:
                try:
                    return await asyncio.to_thread(_get, url)
                except OSError:  # the server task may not listen yet
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.wait_for(running, 15)
            await plc.close()

    threshold = gc.get_threshold()
    try:
        metrics = arun(body, timeout=40)
    finally:  # the gateway tunes the collector for its process; this one goes on testing
        gc.unfreeze()
        gc.set_threshold(*threshold)
    labels = '{device="plc-1",protocol="opcua"}'

    def value(name: str, suffix: str = labels) -> float:
        for line in metrics.splitlines():
            if line.startswith(f"{name}{suffix} "):
                return float(line.split()[-1])
        raise AssertionError(f"{name}{suffix} not in the gateway's metrics:\n{metrics}")

    assert value("keyop_driver_requests_total") > 0
    assert value("keyop_driver_connects_total") == 1
    assert value("keyop_driver_reconnects_total") == 0
    assert value("keyop_driver_notifications_total") >= 5
    good = value("keyop_driver_samples_total", labels[:-1] + ',quality="good"}')
    assert good == value("keyop_driver_notifications_total"), "every value was good"
    assert value("keyop_driver_samples_total", labels[:-1] + ',quality="bad"}') == 0
    for name in ("sessions_lost", "connect_failures", "lost_samples", "dropped", "polls",
                 "queue_overflows", "status_changes", "uncertain_samples"):
        assert value(f"keyop_driver_{name}_total") == 0, name


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())
