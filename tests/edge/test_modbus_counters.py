"""The Modbus driver's counters: what each one counts, and that an exporter can publish them.

Faults come from the simulators (a hole answered with exception code 2, a refused port), and
requests are counted at the device, so the driver's figures are checked against the wire.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

from edgekit import Collector, arun, config
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector as PromCollector

from drivers.base import DriverCounters
from drivers.modbus import ModbusDriver, ModbusSignal
from gateway.metrics import driver_metrics
from simulators.modbus_registers import RegisterDevice


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_counters_follow_requests_errors_by_reason_and_samples() -> None:
    async def body() -> tuple[DriverCounters, int, DriverCounters]:
        device = RegisterDevice(registers=100, holes=[60])
        port = await device.start()
        # Two reads a cycle: hr:10..11 (answered) and hr:60 alone (a hole: exception code 2).
        healthy = ModbusDriver(config("dev", port, ModbusSignal("a", "hr:10", "uint16", 0.03),
                                      ModbusSignal("b", "hr:11", "uint16", 0.03),
                                      ModbusSignal("hole", "hr:60", "uint16", 0.03)))
        dead = ModbusDriver(config("dead", _free_port(), ModbusSignal("x", "hr:0", "uint16",
                                                                      0.03)))
        cols = [Collector(healthy), Collector(dead)]
        try:
            await cols[0].wait_for(lambda s: healthy.reads >= 8)
            await cols[1].wait_for(lambda s: dead.read_errors >= 3)
            # Taken while polling goes on: at most one request is on its way.
            ok, received, gone = healthy.counters(), device.requests, dead.counters()
        finally:
            for col in cols:
                await col.close()
            await device.stop()
        return ok, received, gone

    ok, received, dead = arun(body)
    assert ok.device == "dev" and ok.protocol == "modbus"
    assert received <= ok.requests <= received + 1
    assert set(ok.errors) == {"illegal_data_address"} and ok.error_total >= 3
    answered = ok.good_samples // 2  # two samples a good read
    assert ok.requests - 1 <= answered + ok.error_total <= ok.requests
    assert ok.bad_samples == 1  # the hole is reported once, then quiet while it lasts
    assert ok.overruns == 0 and ok.reconnects == 0 and ok.extra == {"splits": 0}
    assert dead.device == "dead" and dead.requests == 0, "a refused connection sends nothing"
    assert set(dead.errors) == {"comm_lost"} and dead.errors["comm_lost"] >= 3
    assert dead.good_samples == 0 and dead.bad_samples == 1


class _Snapshots(PromCollector):
    def __init__(self, snapshots: list[DriverCounters]) -> None:
        self.snapshots = snapshots

    def collect(self) -> Iterator[Metric]:
        return driver_metrics(self.snapshots)


def test_counters_map_onto_prometheus_counters() -> None:
    snapshot = DriverCounters(device="press-1", protocol="modbus", requests=120,
                              errors={"comm_timeout": 3, "illegal_data_address": 1},
                              overruns=2, reconnects=1, good_samples=500, bad_samples=4,
                              extra={"splits": 1})
    registry = CollectorRegistry()
    registry.register(_Snapshots([snapshot]))
    text = generate_latest(registry).decode()
    for line in (
        'keyop_driver_requests_total{device="press-1",protocol="modbus"} 120.0',
        'keyop_driver_errors_total{device="press-1",protocol="modbus",reason="comm_timeout"} 3.0',
        'keyop_driver_errors_total{device="press-1",protocol="modbus",'
        'reason="illegal_data_address"} 1.0',
        'keyop_driver_overruns_total{device="press-1",protocol="modbus"} 2.0',
        'keyop_driver_reconnects_total{device="press-1",protocol="modbus"} 1.0',
        'keyop_driver_samples_total{device="press-1",protocol="modbus",quality="bad"} 4.0',
        'keyop_driver_splits_total{device="press-1",protocol="modbus"} 1.0',
    ):
        assert line in text.splitlines(), line
    assert snapshot.error_total == 4
