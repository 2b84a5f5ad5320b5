"""Driver benchmarks: `keyop bench modbus-poll | opcua-subscribe | reconnect`.

Each prints one JSON line (the caller prints it last). The simulators of `modbus-poll` and
`opcua-subscribe` run in their own process, so the CPU figures (`time.process_time()` of this
process over the measured window) are the gateway side's alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from drivers.base import Driver, Sample
    from drivers.modbus import ModbusDriver

# The protocol libraries are imported inside each benchmark, so importing this module (the tests
# do, for one benchmark) stays cheap.

log = logging.getLogger(__name__)

WARMUP_S = 2.0


def _p(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@asynccontextmanager
async def _simulator(*args: str) -> AsyncIterator[dict[str, Any]]:
    """Run `python -m <args>` and yield its first stdout line (JSON); stop it after."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if not line:
            raise RuntimeError(f"simulator {args[0]} did not start")
        yield json.loads(line)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


class _Sink:
    """What the gateway does with samples, reduced to a bounded queue and a counter.

    By default one queue item per sample, as `gateway.runtime` feeds its pipeline today;
    `batched` queues each of a driver's batches as one item instead (`drivers.base.
    sample_batches`), to measure what that change of the runtime would save.
    """

    def __init__(self, on_sample: Callable[[Sample], None] | None = None, *,
                 batched: bool = False) -> None:
        self.queue: asyncio.Queue[Sample] = asyncio.Queue(10_000)
        self.batches: asyncio.Queue[Sequence[Sample]] = asyncio.Queue(10_000)
        self.count = 0
        self.bad = 0
        self.on_sample = on_sample
        self.batched = batched
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, drivers: list[Driver]) -> None:
        if self.batched:
            self._tasks = [asyncio.create_task(self._feed_batches(d)) for d in drivers]
            self._tasks.append(asyncio.create_task(self._consume_batches()))
        else:
            self._tasks = [asyncio.create_task(self._feed(d)) for d in drivers]
            self._tasks.append(asyncio.create_task(self._consume()))

    async def _feed(self, driver: Driver) -> None:
        put = self.queue.put
        async for sample in driver.samples():
            await put(sample)

    async def _consume(self) -> None:
        get = self.queue.get
        while True:
            sample = await get()
            self.count += 1
            if not sample.good:
                self.bad += 1
            if self.on_sample is not None:
                self.on_sample(sample)

    async def _feed_batches(self, driver: Driver) -> None:
        from drivers.base import sample_batches

        put = self.batches.put
        async for batch in sample_batches(driver):
            await put(batch)

    async def _consume_batches(self) -> None:
        get = self.batches.get
        while True:
            for sample in await get():
                self.count += 1
                if not sample.good:
                    self.bad += 1
                if self.on_sample is not None:
                    self.on_sample(sample)

    async def stop(self, drivers: list[Driver]) -> None:
        for driver in drivers:
            await driver.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# --- modbus-poll -------------------------------------------------------------------------------


async def _bare_polling(host: str, ports: list[int], reads: list[tuple[int, int]],
                        interval_s: float, duration_s: float) -> float:
    """The same requests from plain pymodbus clients, values dropped: the baseline CPU %."""
    from pymodbus.client import AsyncModbusTcpClient

    clients = [AsyncModbusTcpClient(host, port=p, timeout=1.0, retries=0, reconnect_delay=0)
               for p in ports]
    for client in clients:
        await client.connect()

    stop = asyncio.Event()

    async def poll(client: AsyncModbusTcpClient, offset: float) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + offset
        # A flag, not cancel(): pymodbus may swallow a CancelledError in a request.
        while not stop.is_set():
            await asyncio.sleep(max(0.0, due - loop.time()))
            for start, count in reads:
                await client.read_holding_registers(start, count=count, device_id=1)
            due += interval_s

    tasks = [asyncio.create_task(poll(c, interval_s * i / len(clients)))
             for i, c in enumerate(clients)]
    await asyncio.sleep(interval_s + 0.5)
    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.sleep(duration_s)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    for client in clients:
        client.close()
    return 100 * cpu / wall


async def bench_modbus_poll(*, devices: int, registers: int, interval_s: float,
                            duration_s: float, consumer: str = "batch") -> dict[str, Any]:
    """N devices x R uint16 holding registers, each polled every interval.

    First the same requests from bare pymodbus clients (no decoding, no samples), for a
    baseline on this machine, then the drivers, their samples queued a request's worth at a
    time (`consumer="batch"`, as the gateway does) or one by one ("sample").
    """
    from drivers.modbus import ModbusDeviceConfig, ModbusDriver, ModbusSignal, compile_plan
    from drivers.modbus_plan import MAX_REGISTERS_PER_READ

    async with _simulator("simulators.modbus_registers", "--devices", str(devices),
                          "--registers", str(registers), "--tick", str(interval_s)) as hello:
        host, ports = hello["host"], hello["ports"]
        plan = compile_plan([ModbusSignal(f"r{a}", f"hr:{a}", "uint16", interval_s)
                             for a in range(registers)])
        bare_cpu = await _bare_polling(host, ports, [(r.start, r.count) for r in plan[0].reads],
                                       interval_s, min(duration_s, 10.0))
        drivers: list[ModbusDriver] = []
        for index, port in enumerate(ports):
            signals = tuple(ModbusSignal(f"d{index}.r{a}", f"hr:{a}", "uint16", interval_s)
                            for a in range(registers))
            config = ModbusDeviceConfig(name=f"dev-{index}", host=host, port=port,
                                        timeout_s=1.0, signals=signals,
                                        stagger_s=interval_s * index / len(ports))
            drivers.append(ModbusDriver(config))
        sink = _Sink(batched=consumer == "batch")
        sink.start(list(drivers))
        await asyncio.sleep(WARMUP_S + interval_s)
        for d in drivers:  # the drivers keep their latest cycles; the window starts empty
            d.cycle_ms.clear()
            d.cycle_reads.clear()
        samples0, cpu0, wall0 = sink.count, time.process_time(), time.monotonic()
        await asyncio.sleep(duration_s)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        samples = sink.count - samples0
        reads = [sum(d.cycle_reads) for d in drivers]
        cycles = [len(d.cycle_ms) for d in drivers]
        cycle_ms = [ms for d in drivers for ms in d.cycle_ms]
        errors = sum(d.read_errors for d in drivers)
        overruns = sum(d.overruns for d in drivers)
        await sink.stop(list(drivers))
    per_device = [r / c for r, c in zip(reads, cycles, strict=True) if c]
    return {
        "bench": "modbus-poll",
        "devices": devices,
        "registers": registers,
        "interval_s": interval_s,
        "consumer": consumer,
        "duration_s": round(wall, 2),
        "requests_per_cycle": round(sum(per_device), 2),
        "coalesced_minimum": devices * math.ceil(registers / MAX_REGISTERS_PER_READ),
        "cycle_ms_p50": round(_p(cycle_ms, 0.5), 2),
        "cycle_ms_p99": round(_p(cycle_ms, 0.99), 2),
        "samples_per_s": round(samples / wall, 1),
        "expected_samples_per_s": round(devices * registers / interval_s, 1),
        "cpu_percent": round(100 * cpu / wall, 2),
        "bare_cpu_percent": round(bare_cpu, 2),
        "read_errors": errors,
        "overruns": overruns,
    }


# --- opcua-subscribe ---------------------------------------------------------------------------


async def _bare_subscription(endpoint: str, nodes: list[str], sampling_ms: float,
                             duration_s: float, warmup_s: float) -> dict[str, float]:
    """A plain asyncua subscription (iterator mode, nothing but a counter): the baseline."""
    from asyncua import Client

    client = Client(endpoint, timeout=10)
    await client.connect()
    try:
        sub = await client.create_subscription(sampling_ms, None, queue_maxsize=100_000)
        await sub.subscribe_data_change([client.get_node(n) for n in nodes],
                                        sampling_interval=cast(Any, sampling_ms))
        count = 0
        window: list[float] = []

        async def consume() -> None:
            nonlocal count
            async for _event in sub:
                count += 1

        task = asyncio.create_task(consume())
        await asyncio.sleep(warmup_s)
        count0, cpu0, wall0 = count, time.process_time(), time.monotonic()
        await asyncio.sleep(duration_s)
        window = [time.process_time() - cpu0, time.monotonic() - wall0, count - count0]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await client.disconnect()
    cpu, wall, n = window
    return {"notifications_per_s": n / wall, "cpu_us_per_notification": cpu * 1e6 / max(n, 1),
            "cpu_percent": 100 * cpu / wall}


async def bench_opcua_subscribe(*, items: int, sampling_s: float, duration_s: float,
                                warmup_s: float = WARMUP_S) -> dict[str, Any]:
    """`items` variables changing every `sampling_s`, bare asyncua first, then the driver."""
    from drivers.opcua import OpcUaDeviceConfig, OpcUaDriver, OpcUaSignal

    async with _simulator("simulators.opcua_plc", "--port", "0", "--bench-items", str(items),
                          "--bench-change-ms", str(sampling_s * 1000)) as hello:
        endpoint = hello["listening"]
        nodes = [f"ns=2;s=Bench.V{i}" for i in range(items)]
        bare = await _bare_subscription(endpoint, nodes, sampling_s * 1000, duration_s,
                                        warmup_s)
        lags: list[float] = []
        measuring = False

        def on_sample(sample: Sample) -> None:
            if measuring and sample.good:
                lags.append((time.time() - sample.time) * 1000)

        signals = tuple(OpcUaSignal(f"v{i}", n, sampling_s, sampling_s)
                        for i, n in enumerate(nodes))
        driver = OpcUaDriver(OpcUaDeviceConfig("bench", endpoint, signals, timeout_s=10))
        sink = _Sink(on_sample)
        sink.start([driver])
        await asyncio.sleep(warmup_s + 1)
        measuring = True
        n0, cpu0, wall0 = driver.notifications, time.process_time(), time.monotonic()
        await asyncio.sleep(duration_s)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        n = driver.notifications - n0
        dropped = driver.dropped
        await sink.stop([driver])
    ours = cpu * 1e6 / max(n, 1)
    return {
        "bench": "opcua-subscribe",
        "items": items,
        "sampling_ms": sampling_s * 1000,
        "duration_s": round(wall, 2),
        "notifications_per_s": round(n / wall, 1),
        "expected_per_s": round(items / sampling_s, 1),
        "cpu_us_per_notification": round(ours, 2),
        "cpu_percent": round(100 * cpu / wall, 2),
        "lag_ms_p50": round(_p(lags, 0.5), 2),
        "lag_ms_p99": round(_p(lags, 0.99), 2),
        "bare_notifications_per_s": round(bare["notifications_per_s"], 1),
        "bare_cpu_us_per_notification": round(bare["cpu_us_per_notification"], 2),
        "overhead_ratio": round(ours / max(bare["cpu_us_per_notification"], 1e-9), 3),
        "dropped": dropped,
    }


# --- reconnect ---------------------------------------------------------------------------------


async def _first(driver: Driver, sink: list[Sample], event: asyncio.Event,
                 predicate: Callable[[Sample], bool]) -> None:
    async for sample in driver.samples():
        sink.append(sample)
        if predicate(sample):
            event.set()


async def _recovery(driver: Driver, stop: Callable[[], Any], start: Callable[[], Any],
                    down_s: float, wait_of: Callable[[], float]) -> dict[str, float]:
    samples: list[Sample] = []
    good, bad = asyncio.Event(), asyncio.Event()

    def watch(sample: Sample) -> bool:
        (good if sample.good else bad).set()
        return False

    task = asyncio.create_task(_first(driver, samples, asyncio.Event(), watch))
    try:
        await asyncio.wait_for(good.wait(), 30)
        await stop()
        await asyncio.wait_for(bad.wait(), 30)
        await asyncio.sleep(down_s)
        good.clear()
        await start()
        returned = time.monotonic()
        wait = wait_of()
        await asyncio.wait_for(good.wait(), 60)
        recovery = time.monotonic() - returned
    finally:
        await driver.close()
        await asyncio.gather(task, return_exceptions=True)
    return {"recovery_s": round(recovery, 3), "backoff_wait_s": round(wait, 3),
            "beyond_backoff_s": round(recovery - wait, 3)}


async def bench_reconnect(*, down_s: float, rounds: int) -> dict[str, Any]:
    """Stop a device for `down_s`, start it again, time the first good sample (per protocol)."""
    from drivers.modbus import ModbusDeviceConfig, ModbusDriver, ModbusSignal
    from drivers.opcua import OpcUaDeviceConfig, OpcUaDriver, OpcUaSignal
    from simulators.modbus_device import PressDevice
    from simulators.opcua_plc import OpcUaPlc

    modbus: list[dict[str, float]] = []
    opcua: list[dict[str, float]] = []
    device = PressDevice()
    port = await device.start()
    plc = OpcUaPlc()
    await plc.start()
    try:
        for _ in range(rounds):
            mb = ModbusDriver(ModbusDeviceConfig(
                "press", "127.0.0.1", port, timeout_s=0.5,
                signals=(ModbusSignal("good", "hr:0", "uint32", 0.1),),
                backoff_initial_s=0.1, backoff_max_s=5.0))

            async def mb_start() -> None:
                await device.start(port=port)

            modbus.append(await _recovery(mb, device.stop, mb_start, down_s,
                                          partial(getattr, mb.link, "current_wait_s")))
            ua_driver = OpcUaDriver(OpcUaDeviceConfig(
                "plc", plc.endpoint,
                (OpcUaSignal("count", plc.node_id("W1", "PartCount"), 0.1),),
                timeout_s=1.0, keepalive_s=0.5, backoff_initial_s=0.1, backoff_max_s=5.0))

            async def ua_start() -> None:
                await plc.start()

            opcua.append(await _recovery(ua_driver, plc.stop, ua_start, down_s,
                                         partial(getattr, ua_driver, "current_wait_s")))
    finally:
        await device.stop()
        await plc.close()

    def summary(rows: list[dict[str, float]]) -> dict[str, float]:
        return {
            "recovery_s_max": max(r["recovery_s"] for r in rows),
            "recovery_s_median": statistics.median(r["recovery_s"] for r in rows),
            "beyond_backoff_s_max": max(r["beyond_backoff_s"] for r in rows),
        }

    return {
        "bench": "reconnect",
        "down_s": down_s,
        "rounds": rounds,
        "modbus": summary(modbus),
        "opcua": summary(opcua),
        "goal_met": all(r["beyond_backoff_s"] < 2.0 for r in (*modbus, *opcua)),
    }
