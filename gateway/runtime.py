"""The edge daemon: drivers → mapping engine → outbox (group commit) → uplink.

One asyncio loop. Each driver runs under a supervisor that restarts it with backoff when it
fails; samples and drafts move through bounded queues, so a slow disk slows sampling down
instead of filling memory.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

from common.heap import settle_heap
from common.sdnotify import Notifier, watchdog
from drivers.base import Driver, Quality, Sample, sample_batches
from edge_store.outbox import Bounds, Entry, Outbox, OutboxError, OutboxFull
from edge_store.writer import GroupWriter
from gateway.api import start_local_api, stop_local_api
from gateway.config import GatewayConfig
from gateway.control import MappingControl
from gateway.ids import new_ids
from gateway.outbox_gap import gap_entry_factory
from gateway.resume import encode_state, restored_engine
from gateway.service import StartBacklog, bounded, pending, status_line
from mapping.engine import CompiledMapping, Engine
from sync.packet import Draft
from sync.packet_codec import render
from sync.uplink import Uplink, UplinkConfig

log = logging.getLogger(__name__)

TICK = ""  # the signal name of a tick: no real signal has an empty name
TICK_INTERVAL_S = 0.1
# Batches of samples (one per device request, e.g. up to 125 registers or 2,000 coils) waiting
# for the engine; when full, drivers wait: the bound is what slows them down.
SAMPLE_BATCHES = 200
DRAFT_QUEUE = 10_000
COMMIT_BATCH = 1_000
RESTART_BACKOFF_MIN_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
# A refused or failed commit is retried soon: room appears as soon as the hub acks.
FULL_RETRY_MIN_S = 0.05
FULL_RETRY_MAX_S = 1.0
# How long a stop waits for the uplink to say offline and disconnect (after the drain).
UPLINK_STOP_S = 3.0


@dataclass
class GatewayStats:
    samples: int = 0
    bad_samples: int = 0
    packets_emitted: int = 0
    driver_restarts: int = 0
    commit_failures: int = 0


def uplink_config(config: GatewayConfig) -> UplinkConfig:
    """The uplink's settings from gateway.yaml; credentials are read here (env or file)."""
    mqtt = config.settings.mqtt
    username, password = config.mqtt_credentials()
    tls = (mqtt.tls.tls(lambda name: str(config.resolve(name)))
           if mqtt.tls is not None else None)
    return UplinkConfig(
        host=mqtt.host,
        port=mqtt.port,
        gateway=config.gateway_id,
        source=config.source,
        session_expiry_s=mqtt.session_expiry,
        keepalive_s=mqtt.keepalive,
        ack_timeout_s=mqtt.ack_timeout,
        batch_max_events=mqtt.batch_max_events,
        username=username,
        password=password,
        tls=tls,
    )


def open_outbox(config: GatewayConfig, compiled: CompiledMapping | None = None, *,
                exclusive: bool = True, check: bool = True) -> Outbox:
    """The gateway's outbox with its bounds, policy and gap records, as gateway.yaml says.

    `exclusive`: hold the file's lock (the daemon, `keyop outbox purge`); a second holder
    gets `OutboxLocked`.
    """
    settings = config.settings.outbox
    config.outbox_path.parent.mkdir(parents=True, exist_ok=True)
    return Outbox(
        config.outbox_path, config.source,
        synchronous=settings.synchronous,
        bounds=Bounds(max_packets=settings.max_packets, max_bytes=settings.max_bytes,
                      policy=settings.policy),
        gap_entry=gap_entry_factory(config, compiled),
        max_file_bytes=settings.max_file_bytes,
        exclusive=exclusive,
        check=check,
    )


class _Produced(NamedTuple):
    """What the engine produced for one batch of samples; `state`, when taken, is the
    engine's snapshot right after it."""

    drafts: list[Draft]
    state: dict[str, Any] | None


class _Unit(NamedTuple):
    """The outbox entries of one `_Produced` (ids fixed, so a retry stores the same)."""

    entries: list[Entry]
    state: dict[str, Any] | None


class Pipeline:
    """Mapping engine → outbox, shared by the daemon, replay-style benchmarks and tests.

    `samples` takes batches of samples in order (a driver's request at a time: one queue
    hand-off per request instead of per signal); drafts are committed in emission order, so
    the outbox sequence follows the engine's output exactly.

    With `keep_state`, each commit also stores the engine's snapshot as of right after the
    last packet it holds, in the same transaction: a restart continues from there. The engine
    never holds drafts across an await (it waits for room before a batch, not after), so when
    the committer has taken every queued draft, the engine's state now is that snapshot: one
    snapshot per commit. A commit is cut short of the queue only after a batch whose snapshot
    the engine took itself (once per `COMMIT_BATCH` drafts).
    """

    def __init__(self, engine: Engine, writer: GroupWriter, source: str, *,
                 keep_state: bool = True) -> None:
        self.engine = engine
        self.writer = writer
        self.source = source
        self.keep_state = keep_state
        self.stats = GatewayStats()
        self.samples: asyncio.Queue[Sequence[Sample] | None] = asyncio.Queue(SAMPLE_BATCHES)
        # Batches' outputs (each at least one draft); at DRAFT_QUEUE the engine waits for room.
        self._drafts: asyncio.Queue[_Produced | None] = asyncio.Queue()
        self._room = asyncio.Event()
        self._since_state = 0  # drafts queued since the engine's last own snapshot
        self.on_commit: list[Callable[[list[int]], None]] = []

    def _render(self, draft: Draft, packet_id: str, seq: int, epoch: str) -> bytes:
        return render(draft, id=packet_id, source=self.source, sequence=seq, epoch=epoch,
                      recorded=time.time())

    async def map_samples(self) -> None:
        """Engine task: samples in, drafts out, until a `None` sentinel.

        A sample whose signal is `TICK` only lets time pass (hold times, stalled alarms, timed
        progress); `self.engine` may be swapped by a mapping reload between two samples.
        """
        stats = self.stats
        drafts = self._drafts
        while (batch := await self.samples.get()) is not None:
            while drafts.qsize() >= DRAFT_QUEUE:
                self._room.clear()
                await self._room.wait()
            engine = self.engine
            produced: list[Draft] = []
            for sample in batch:
                if sample.signal == TICK:
                    engine.tick(sample.monotonic, sample.time, produced)
                else:
                    stats.samples += 1
                    # A count or planned value a packet cannot carry is a bad sample too.
                    sample = engine.screen(sample)
                    if not sample.good:
                        stats.bad_samples += 1
                    produced += engine.step(sample)
            if produced:
                state = None
                self._since_state += len(produced)
                if self.keep_state and self._since_state >= COMMIT_BATCH:
                    state, self._since_state = engine.snapshot(), 0
                drafts.put_nowait(_Produced(produced, state))
        drafts.put_nowait(None)

    async def tick_forever(self, interval: float = TICK_INTERVAL_S) -> None:
        """Ticker task: time passes for the engine even when no sample arrives."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            await self.samples.put((Sample(TICK, None, Quality.GOOD, time.time(), loop.time()),))

    async def commit_drafts(self) -> None:
        """Committer task: takes every draft waiting and commits them in one group."""
        queue = self._drafts
        done = False
        while not done:
            first = await queue.get()
            if first is None:
                break
            batch = [first]
            size = len(first.drafts)
            while not queue.empty() and (size < COMMIT_BATCH or batch[-1].state is None):
                item = queue.get_nowait()
                if item is None:
                    done = True
                    break
                batch.append(item)
                size += len(item.drafts)
            self._room.set()
            units = self._units(batch)
            if self.keep_state and queue.empty():
                # Every draft the engine produced is in `units`: its state now goes with them.
                units[-1] = units[-1]._replace(state=self.engine.snapshot())
            await self._commit(units)

    def _units(self, batch: list[_Produced]) -> list[_Unit]:
        ids = new_ids(sum(len(produced.drafts) for produced in batch))  # one clock read
        units, start = [], 0
        for produced in batch:
            mine = ids[start:start + len(produced.drafts)]
            start += len(mine)
            units.append(_Unit([Entry(pid, partial(self._render, draft, pid), draft.priority,
                                      draft.type)
                                for draft, pid in zip(produced.drafts, mine, strict=True)],
                               produced.state))
        return units

    async def save_state(self) -> None:
        """Store the engine's state alone (every draft committed: the daemon is stopping)."""
        if self.keep_state:
            await self._commit([_Unit([], self.engine.snapshot())])

    async def _commit(self, units: list[_Unit]) -> None:
        """Commit the units' entries with the newest unit's state, in one transaction."""
        entries = [entry for unit in units for entry in unit.entries]
        latest = units[-1].state
        state = encode_state(latest) if latest is not None else None
        backoff = FULL_RETRY_MIN_S
        failing = False
        while True:
            try:
                seqs = await self.writer.append_many(entries, state)
                break
            except OutboxError as error:
                # Nothing accepted is dropped: the same entries (same ids) are tried again.
                # A full outbox under `refuse` lands here too: the packets wait (bounded
                # queues behind them slow the drivers down) and the outbox raised the alarm.
                if isinstance(error, OutboxFull) and len(entries) > 1:
                    # A batch may be larger than the room the bound will ever leave: halves,
                    # in order, fit one after the other; each carries its last unit's state,
                    # if the engine took one there (else the next half's commit brings it).
                    if len(units) > 1:
                        half = len(units) // 2
                        await self._commit(units[:half])
                        await self._commit(units[half:])
                    else:
                        half = len(entries) // 2
                        await self._commit([_Unit(entries[:half], None)])
                        await self._commit([_Unit(entries[half:], units[0].state)])
                    return
                self.stats.commit_failures += 1
                if not failing:
                    log.error("outbox commit failed; retrying until it succeeds", extra={
                        "packets": len(entries), "error": str(error),
                        "full": isinstance(error, OutboxFull)})
                    failing = True
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, FULL_RETRY_MAX_S)
        if failing:
            log.info("outbox commit recovered", extra={"packets": len(entries)})
        self.stats.packets_emitted += len(seqs)
        for callback in self.on_commit:
            callback(seqs)

    async def close(self) -> None:
        await self.samples.put(None)


class Gateway:
    """The running edge daemon for one gateway.yaml."""

    def __init__(
        self, config: GatewayConfig, compiled: CompiledMapping, drivers: list[Driver]
    ) -> None:
        self.config = config
        self.compiled = compiled
        self.drivers = drivers
        self.pipeline: Pipeline | None = None
        self.uplink: Uplink | None = None
        self.started_at = time.time()
        self.control = MappingControl(self)  # reloads: SIGHUP and the local API
        self.api_port: int | None = None
        self.outbox: Outbox | None = None
        self.notifier = Notifier()
        self.drivers_started = False
        self.stopping = False
        self.backlog_at_start: StartBacklog | None = None
        self.device_up: dict[str, bool] = {}
        self.device_fault: dict[str, str] = {}  # why a device is down, while it is
        """Per device: whether its latest read was good (a failed read is all bad)."""
        self._feeders: dict[Driver, asyncio.Task[None]] = {}

    def _start_driver(self, driver: Driver, pipeline: Pipeline) -> None:
        self._feeders[driver] = asyncio.create_task(
            self._supervise(driver, pipeline), name=f"driver:{driver.name}")

    async def _stop_drivers(self, drivers: list[Driver]) -> None:
        for driver in drivers:
            await driver.close()
        tasks = [self._feeders.pop(driver) for driver in drivers if driver in self._feeders]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def apply_mapping(
        self, compiled: CompiledMapping, drivers: list[Driver] | None
    ) -> None:
        """Swap in a checked mapping. Stations whose definition is unchanged keep their state;
        with `drivers`, the device links are replaced too (sources or signals changed)."""
        if self.pipeline is None:
            raise RuntimeError("the gateway is not running")
        pipeline = self.pipeline
        pipeline.engine = Engine(compiled, previous=pipeline.engine)
        self.compiled = compiled
        if drivers is not None:
            old, self.drivers = self.drivers, drivers
            await self._stop_drivers(old)
            for driver in drivers:
                self._start_driver(driver, pipeline)

    async def run(self, stop: asyncio.Event, now: asyncio.Event | None = None) -> None:
        """Run until `stop` is set, then stop gracefully (`_wind_down`) within
        `service.stop_timeout`, or at once when `now` is set (a second SIGTERM)."""
        now = now or asyncio.Event()
        self.outbox = outbox = open_outbox(self.config, self.compiled)
        writer = GroupWriter(outbox)
        writer.start()
        uplink = Uplink(uplink_config(self.config), outbox)
        engine = restored_engine(self.compiled, outbox, asyncio.get_running_loop().time(),
                                 time.time())
        pipeline = Pipeline(engine, writer, self.config.source)
        pipeline.on_commit.append(lambda _seqs: uplink.wake())
        self.pipeline, self.uplink = pipeline, uplink
        stats = outbox.stats()
        self.backlog_at_start = StartBacklog(stats.pending, stats.last_seq,
                                             stats.oldest_pending_created)
        settle_heap()
        log.info("gateway started", extra={
            "source": self.config.source, "epoch": stats.epoch, "last_seq": stats.last_seq,
            "pending": stats.pending, "drivers": len(self.drivers),
            **({"pending_since": self.backlog_at_start.as_json()["oldest"]}
               if stats.pending else {})})

        uplink_task = asyncio.create_task(uplink.run(), name="uplink")
        mapper = asyncio.create_task(pipeline.map_samples(), name="mapping")
        committer = asyncio.create_task(pipeline.commit_drafts(), name="committer")
        ticker = asyncio.create_task(pipeline.tick_forever(), name="ticker")
        for driver in self.drivers:
            self._start_driver(driver, pipeline)
        self.drivers_started = True
        api = start_local_api(self)
        notifier = self.notifier
        notifier.ready(status_line(self))
        pings = asyncio.create_task(watchdog(notifier, lambda: status_line(self)),
                                    name="watchdog")
        try:
            await stop.wait()
        finally:
            self.stopping = True
            timeout = self.config.settings.service.stop_timeout
            notifier.stopping(status_line(self))
            log.info("gateway stopping", extra={"pending": pending(self),
                                                "stop_timeout_s": timeout})
            await stop_local_api(api)
            graceful = await bounded(self._wind_down(pipeline, ticker, mapper, committer,
                                                     writer), timeout, now)
            if not graceful:
                log.warning("gateway stop cut short: unacknowledged packets stay in the outbox",
                            extra={"pending": pending(self), "second_signal": now.is_set()})
            # A connect in progress (an unreachable broker) may take its connect timeout:
            # the stop does not wait for it.
            if not await bounded(uplink.stop(clean=graceful), UPLINK_STOP_S, now):
                uplink_task.cancel()
            await asyncio.gather(uplink_task, return_exceptions=True)
            pings.cancel()
            await asyncio.gather(pings, return_exceptions=True)
            for task in (ticker, mapper, committer):
                task.cancel()
            await asyncio.gather(ticker, mapper, committer, return_exceptions=True)
            outbox.close()  # the worker finishes its queued commits first
            log.info("gateway stopped", extra={
                "packets_emitted": pipeline.stats.packets_emitted,
                "samples": pipeline.stats.samples, "pending": outbox.pending_count})
            notifier.close()

    async def _wind_down(self, pipeline: Pipeline, ticker: asyncio.Task[None],
                         mapper: asyncio.Task[None], committer: asyncio.Task[None],
                         writer: GroupWriter) -> None:
        """No new samples; the engine maps what it has, the outbox commits it; then the
        uplink publishes and waits for the hub's acks of everything committed."""
        await self._stop_drivers(list(self._feeders))
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)
        await pipeline.close()
        await mapper
        await committer
        await pipeline.save_state()
        await writer.close()
        assert self.uplink is not None and self.outbox is not None
        await self.uplink.wait_acked(self.outbox.last_seq, None)  # bounded by the caller

    def _note_fault(self, name: str, batch: Sequence[Sample]) -> None:
        """Keep the reason of a device's bad batch for /api/status, until a good one."""
        if not batch:
            return
        if batch[0].good:
            self.device_fault.pop(name, None)
        elif batch[0].quality is Quality.BAD:
            self.device_fault[name] = batch[0].reason or "bad sample"

    async def _supervise(self, driver: Driver, pipeline: Pipeline) -> None:
        backoff = RESTART_BACKOFF_MIN_S
        up, name = self.device_up, driver.name
        while True:
            try:
                async for batch in sample_batches(driver):
                    up[name] = batch[0].good if batch else up.get(name, False)
                    self._note_fault(name, batch)
                    await pipeline.samples.put(batch)
                    backoff = RESTART_BACKOFF_MIN_S
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # the supervisor boundary: one device never stops another
                up[name] = False
                pipeline.stats.driver_restarts += 1
                log.exception("driver failed; restarting", extra={
                    "device": driver.name, "retry_s": round(backoff, 2)})
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, RESTART_BACKOFF_MAX_S)
