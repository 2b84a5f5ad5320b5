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
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from ulid import ULID

from drivers.base import Driver, Sample
from edge_store.outbox import Entry, Outbox, OutboxError
from edge_store.writer import GroupWriter
from gateway.config import GatewayConfig
from mapping.engine import CompiledMapping, Engine
from sync.packet import Draft, render
from sync.uplink import Uplink, UplinkConfig

log = logging.getLogger(__name__)

SAMPLE_QUEUE = 10_000
DRAFT_QUEUE = 10_000
COMMIT_BATCH = 1_000
RESTART_BACKOFF_MIN_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0


@dataclass
class GatewayStats:
    samples: int = 0
    bad_samples: int = 0
    packets_emitted: int = 0
    driver_restarts: int = 0
    commit_failures: int = 0


def uplink_config(config: GatewayConfig) -> UplinkConfig:
    mqtt = config.settings.mqtt
    return UplinkConfig(
        host=mqtt.host,
        port=mqtt.port,
        gateway=config.gateway_id,
        source=config.source,
        session_expiry_s=mqtt.session_expiry,
        keepalive_s=mqtt.keepalive,
        ack_timeout_s=mqtt.ack_timeout,
        batch_max_events=mqtt.batch_max_events,
    )


class Pipeline:
    """Mapping engine → outbox, shared by the daemon, replay-style benchmarks and tests.

    `feed` takes samples in order; `drafts` are committed in emission order, so the outbox
    sequence follows the engine's output exactly.
    """

    def __init__(self, engine: Engine, writer: GroupWriter, source: str) -> None:
        self.engine = engine
        self.writer = writer
        self.source = source
        self.stats = GatewayStats()
        self.samples: asyncio.Queue[Sample | None] = asyncio.Queue(SAMPLE_QUEUE)
        self._drafts: asyncio.Queue[Draft | None] = asyncio.Queue(DRAFT_QUEUE)
        self.on_commit: list[Callable[[list[int]], None]] = []

    def _render(self, draft: Draft, packet_id: str, seq: int, epoch: str) -> bytes:
        return render(draft, id=packet_id, source=self.source, sequence=seq, epoch=epoch,
                      recorded=time.time())

    async def map_samples(self) -> None:
        """Engine task: samples in, drafts out, until a `None` sentinel."""
        while (sample := await self.samples.get()) is not None:
            self.stats.samples += 1
            if not sample.good:
                self.stats.bad_samples += 1
            for draft in self.engine.step(sample):
                await self._drafts.put(draft)
        await self._drafts.put(None)

    async def emit(self, draft: Draft) -> None:
        await self._drafts.put(draft)

    async def commit_drafts(self) -> None:
        """Committer task: takes every draft waiting and commits them in one group."""
        done = False
        while not done:
            first = await self._drafts.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < COMMIT_BATCH and not self._drafts.empty():
                item = self._drafts.get_nowait()
                if item is None:
                    done = True
                    break
                batch.append(item)
            entries = [
                Entry(pid, partial(self._render, draft, pid), draft.priority)
                for draft in batch
                for pid in (str(ULID()),)
            ]
            await self._commit(entries)

    async def _commit(self, entries: list[Entry]) -> None:
        backoff = RESTART_BACKOFF_MIN_S
        while True:
            try:
                seqs = await self.writer.append_many(entries)
                break
            except OutboxError as error:
                # Nothing accepted is dropped: the same entries (same ids) are tried again.
                self.stats.commit_failures += 1
                log.error("outbox commit failed; retrying", extra={
                    "packets": len(entries), "error": str(error), "retry_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RESTART_BACKOFF_MAX_S)
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

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.config.settings
        self.config.outbox_path.parent.mkdir(parents=True, exist_ok=True)
        outbox = Outbox(self.config.outbox_path, self.config.source,
                        synchronous=settings.outbox.synchronous)
        writer = GroupWriter(outbox)
        writer.start()
        uplink = Uplink(uplink_config(self.config), outbox)
        pipeline = Pipeline(Engine(self.compiled), writer, self.config.source)
        pipeline.on_commit.append(lambda _seqs: uplink.wake())
        self.pipeline, self.uplink = pipeline, uplink
        stats = outbox.stats()
        log.info("gateway started", extra={
            "source": self.config.source, "epoch": stats.epoch, "last_seq": stats.last_seq,
            "pending": stats.pending, "drivers": len(self.drivers)})

        uplink_task = asyncio.create_task(uplink.run(), name="uplink")
        mapper = asyncio.create_task(pipeline.map_samples(), name="mapping")
        committer = asyncio.create_task(pipeline.commit_drafts(), name="committer")
        feeders = [
            asyncio.create_task(self._supervise(driver, pipeline), name=f"driver:{driver.name}")
            for driver in self.drivers
        ]
        try:
            await stop.wait()
        finally:
            log.info("gateway stopping")
            for driver in self.drivers:
                await driver.close()
            for task in feeders:
                task.cancel()
            await asyncio.gather(*feeders, return_exceptions=True)
            # Everything already sampled is mapped and committed before we stop.
            await pipeline.close()
            await mapper
            await committer
            await writer.close()
            await uplink.stop()
            await asyncio.gather(uplink_task, return_exceptions=True)
            outbox.close()
            log.info("gateway stopped", extra={
                "packets_emitted": pipeline.stats.packets_emitted,
                "samples": pipeline.stats.samples})

    async def _supervise(self, driver: Driver, pipeline: Pipeline) -> None:
        backoff = RESTART_BACKOFF_MIN_S
        while True:
            try:
                async for sample in driver.samples():
                    await pipeline.samples.put(sample)
                    backoff = RESTART_BACKOFF_MIN_S
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # the supervisor boundary: one device never stops another
                pipeline.stats.driver_restarts += 1
                log.exception("driver failed; restarting", extra={
                    "device": driver.name, "retry_s": round(backoff, 2)})
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, RESTART_BACKOFF_MAX_S)
