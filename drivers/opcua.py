"""OPC UA driver (asyncua): subscriptions (or polling reads), security, reconnect.

Contract (see `drivers.base.Driver`):
- `samples()` connects on first use. Nodes (NodeIds and browse paths, `drivers.opcua_nodes`)
  are resolved at every connect; a node the server does not have gives one `BAD` sample
  (`node_missing: ...` naming the signal and the node) and the other signals carry on.
- Subscribe mode: one subscription per publishing interval (the signals' `interval`), one
  monitored item per signal with its sampling interval, queue size and absolute deadband.
  asyncua's publish loop only enqueues (its iterator queue, pumped into ours); the values are
  turned into samples in the driver's own generator (`drivers.opcua_subscription`). Poll
  mode: one `Read` of all nodes of an interval group per cycle, on monotonic deadlines (late
  cycles skipped, `overruns`).
- Time and quality: the source timestamp (else the server's, else receive time) is the
  sample's `time`; the status code's severity gives good / uncertain / bad, with the status
  name as the reason. A value whose status carries the Overflow bit (the server's
  monitored-item queue discarded values) is counted in `queue_overflows`.
- Batches: `batches()` yields what `samples()` yields, in the same order, one list per burst
  (the data changes waiting in the driver's queue when it wakes, normally one publish
  response; at most `BATCH_MAX`), per poll-mode Read, or per loss report
  (see `drivers.base.BatchDriver`).
- Session health: asyncua's watchdog reads the server state every `keepalive_s`; a failed
  probe, a closed socket or a bad subscription status ends the session. Each signal then gets
  one `BAD` sample (`comm_lost: ...`) and the driver reconnects with exponential backoff and
  jitter, resolving nodes and creating the monitored items again.
- Security: policy None, or Basic256Sha256 / Aes128Sha256RsaOaep / Aes256Sha256RsaPss with
  mode Sign or SignAndEncrypt, client certificate and key from files; with `trust_dir`, the
  server certificate must be in that folder (or be signed by a CA there), else the connect
  fails with `security: ...` naming the status. The password is given to the driver by the
  caller (from an environment variable or a file), never read from the mapping.
- No sample is yielded after `close()` returns.
- Counters: `counters()` (see `drivers.opcua_counters.OpcUaCounters` for each one's meaning).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from contextlib import aclosing
from typing import Any

from asyncua import Client, ua

from drivers.base import ConfigError, DriverCounters, Quality, Sample, flatten
from drivers.opcua_counters import OpcUaCounters
from drivers.opcua_logs import fold_asyncua_logs
from drivers.opcua_nodes import (
    check_security,
    check_signal,
    data_type_problems,
    resolve_nodes,
)
from drivers.opcua_security import TrustCheck, apply_security, connect_reason
from drivers.opcua_subscription import (
    BATCH_MAX,
    CLOSED,
    LOST,
    QUEUE_BOUND,
    Item,
    SessionLost,
    Subscriptions,
    sample_of,
)
from drivers.settings import OpcUaDeviceConfig, OpcUaSecurity, OpcUaSignal

__all__ = ["BATCH_MAX", "QUEUE_BOUND", "OpcUaDeviceConfig", "OpcUaDriver", "OpcUaSecurity",
           "OpcUaSignal"]

log = logging.getLogger(__name__)

_CONNECT_ERRORS = (OSError, TimeoutError, ConnectionError, ua.UaError, ValueError)


class OpcUaDriver:
    """Reads one OPC UA server (see the module docstring).

    Counters: `counters()` gives them all at once (`drivers.opcua_counters`); `notifications`,
    `reconnects`, `connect_failures`, `dropped` and `overruns` are also readable here.
    """

    def __init__(self, config: OpcUaDeviceConfig, *, rng: random.Random | None = None) -> None:
        where = f"opcua device {config.name!r}"
        if not config.endpoint.startswith("opc.tcp://"):
            raise ConfigError(f"{where}: endpoint {config.endpoint!r}: expected opc.tcp://...")
        if config.mode not in ("subscribe", "poll"):
            raise ConfigError(f"{where}: mode {config.mode!r}: expected subscribe or poll")
        check_security(where, config.security)
        if not 0 < config.backoff_initial_s <= config.backoff_max_s:
            raise ConfigError(f"{where}: backoff: expected 0 < initial <= max")
        seen: set[str] = set()
        self._items: list[Item] = []
        for signal in config.signals:
            if signal.name in seen:
                raise ConfigError(f"signal {signal.name!r}: defined twice")
            seen.add(signal.name)
            self._items.append(Item(signal, check_signal(signal)))
        self.config = config
        self.name = config.name
        self.stats = OpcUaCounters()
        #: Seconds of the current backoff wait before the next connect attempt.
        self.current_wait_s = 0.0
        self._rng = rng or random.Random()
        self._closed = asyncio.Event()
        self._stopped = False  # `_closed` as a plain flag: checked before every yield
        self._client: Client | None = None
        self._fault: str | None = None
        self._bad: set[str] = set()  # signals whose last sample was BAD
        self._subscriptions = Subscriptions(config.name, config.endpoint, self.stats, self._bad)
        self._missing: set[str] = set()  # signals whose node the server does not have
        self._connected_once = False
        self._check: TrustCheck | None = None  # our check of the server's certificate
        self._fold = fold_asyncua_logs()
        self._folded_at = 0  # the fold's count when the current fault began

    def counters(self) -> DriverCounters:
        """A snapshot of the counters, for the status API and the metrics exporter."""
        return self.stats.snapshot(self.name)

    @property
    def notifications(self) -> int:
        return self.stats.notifications

    @property
    def reconnects(self) -> int:
        return self.stats.reconnects

    @property
    def connect_failures(self) -> int:
        return self.stats.connect_failures

    @property
    def dropped(self) -> int:
        return self.stats.dropped

    @property
    def overruns(self) -> int:
        return self.stats.overruns

    # --- the sample stream -----------------------------------------------------------------

    def samples(self) -> AsyncIterator[Sample]:
        """Connect, stream samples, reconnect on loss, until `close()`."""
        return flatten(self.batches(), lambda: self._stopped)

    async def batches(self) -> AsyncGenerator[list[Sample], None]:
        """As `samples()`, a list at a time (see the module docstring), in the same order."""
        delay = self.config.backoff_initial_s
        stats = self.stats
        while not self._stopped:
            try:
                client = await self._connect()
            except SessionLost as lost:
                if self._stopped:
                    return
                stats.connect_failures += 1
                stats.error(lost.reason)
                lost_batch = self._lost_samples(lost.reason)
                if lost_batch:
                    yield lost_batch
                if await self._backoff(delay):
                    return
                delay = min(delay * 2, self.config.backoff_max_s)
                continue
            delay = self.config.backoff_initial_s
            try:
                items, missing = await self._guard(self._resolve(client))
                if missing and not self._stopped:
                    yield missing
                stream = (self._subscriptions.stream(client, items, self._guard)
                          if self.config.mode == "subscribe" else self._poll(client, items))
                async with aclosing(stream):
                    async for batch in stream:
                        if self._stopped:
                            return
                        yield batch
            except SessionLost as lost:
                if self._stopped:
                    return
                stats.sessions_lost += 1
                stats.error(lost.reason)
                lost_batch = self._lost_samples(lost.reason)
                if lost_batch:
                    yield lost_batch
            finally:
                await self._disconnect()
            if self._stopped:
                return
            if await self._backoff(delay):
                return
            delay = min(delay * 2, self.config.backoff_max_s)

    async def close(self) -> None:
        """Stop and disconnect; no sample is yielded after this returns."""
        self._stopped = True
        self._closed.set()
        self._subscriptions.put(CLOSED)
        await self._disconnect()

    async def _backoff(self, delay: float) -> bool:
        """Wait the jittered delay; True if closed meanwhile."""
        spread = self.config.backoff_jitter
        wait = delay * (1.0 + self._rng.uniform(-spread, spread))
        self.current_wait_s = wait
        try:
            await asyncio.wait_for(self._closed.wait(), timeout=wait)
        except TimeoutError:
            pass
        return self._closed.is_set()

    # --- connecting ------------------------------------------------------------------------

    async def _connect(self) -> Client:
        cfg = self.config
        client = Client(cfg.endpoint, timeout=cfg.timeout_s, watchdog_intervall=cfg.keepalive_s)
        client.session_timeout = 60_000  # ms; a dead session must not linger an hour
        client.name = client.description = f"keyop {cfg.name}"
        client.uaclient.observer = self.stats.observer  # counts the requests sent
        if cfg.username:
            client.set_user(cfg.username)
            if cfg.password is not None:
                client.set_password(cfg.password)
        self._subscriptions.clear()  # leftovers of a previous session

        async def on_lost(exc: Exception) -> None:
            self._subscriptions.put(LOST)

        client.connection_lost_callback = on_lost
        self._check = None
        try:
            self._check = await asyncio.wait_for(apply_security(client, cfg.security),
                                                 timeout=cfg.timeout_s * 2)
            await asyncio.wait_for(client.connect(), timeout=cfg.timeout_s * 2)
        except (*_CONNECT_ERRORS, AssertionError) as exc:  # see connect_reason on the assert
            await self._quiet_disconnect(client)
            raise SessionLost(self._connect_reason(exc)) from exc
        if self._closed.is_set():  # close() ran while we were connecting
            await self._quiet_disconnect(client)
            raise SessionLost("closed")
        self._client = client
        self.stats.connects += 1
        if self._connected_once:
            self.stats.reconnects += 1
        self._connected_once = True
        if self._fault is not None:
            folded = self._fold.folded - self._folded_at
            log.info("opcua device %s: connected again after %s (%d asyncua log lines folded)",
                     self.name, self._fault, folded,
                     extra={"device": self.name, "address": cfg.endpoint, "reason": "recovered",
                            "folded": folded})
            self._fault = None
        return client

    def _connect_reason(self, exc: BaseException) -> str:
        cfg = self.config
        return connect_reason(exc, endpoint=cfg.endpoint, timeout_s=cfg.timeout_s,
                              sec=cfg.security, check=self._check)

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await self._quiet_disconnect(client)

    async def _quiet_disconnect(self, client: Client) -> None:
        try:
            await asyncio.wait_for(client.disconnect(), timeout=self.config.timeout_s)
        except (*_CONNECT_ERRORS, RuntimeError):
            pass  # the server is gone already; the socket is closed either way

    async def _resolve(self, client: Client) -> tuple[list[Item], list[Sample]]:
        """Resolve every node; the items found, and a BAD sample per node that is missing."""
        resolved = await resolve_nodes(client, [i.ref for i in self._items])
        missing: list[tuple[Item, str]] = []
        for item, node in zip(self._items, resolved, strict=True):
            if isinstance(node, str):
                missing.append((item, f"node_missing: signal {item.signal.name!r}: node "
                                f"{item.ref.text!r} not found on {self.config.endpoint} ({node})"))
            else:
                item.node_id = node
        if missing:
            self.stats.error("node_missing", len(missing))
        missing += await self._mistyped(client)
        now, mono = time.time(), asyncio.get_running_loop().time()
        bad = []
        for item, reason in missing:
            item.node_id = None
            if item.signal.name in self._missing:
                continue  # reported at an earlier connect; quiet until it is found
            self._missing.add(item.signal.name)
            log.error("opcua device %s: %s", self.name, reason,
                      extra={"device": self.name, "address": item.ref.text, "reason": reason})
            self._bad.add(item.signal.name)
            bad.append(Sample(item.signal.name, None, Quality.BAD, now, mono, reason))
        self.stats.made(bad)
        found = [i for i in self._items if i.node_id is not None]
        self._missing.difference_update(i.signal.name for i in found)
        return found, bad

    async def _mistyped(self, client: Client) -> list[tuple[Item, str]]:
        """Resolved nodes whose DataType is not the type the mapping declares for them."""
        typed = [i for i in self._items if i.node_id is not None and i.signal.expected]
        if not typed:
            return []
        problems = await data_type_problems(
            client, [(i.signal.expected or "", i.node_id) for i in typed if i.node_id])
        found = [(item, f"type_mismatch: signal {item.signal.name!r}: node {item.ref.text!r} "
                        f"on {self.config.endpoint}: {problem}")
                 for item, problem in zip(typed, problems, strict=True) if problem]
        if found:
            self.stats.error("type_mismatch", len(found))
        return found

    # --- poll mode -------------------------------------------------------------------------

    async def _poll(self, client: Client,
                    items: list[Item]) -> AsyncGenerator[list[Sample], None]:
        """One Read per interval group and cycle, on monotonic deadlines; a batch per Read."""
        loop = asyncio.get_running_loop()
        stats = self.stats
        groups: dict[float, list[Item]] = {}
        for item in items:
            groups.setdefault(item.signal.interval_s, []).append(item)
        due = {interval: loop.time() for interval in groups}
        while groups and not self._closed.is_set():
            interval = min(due, key=due.__getitem__)
            wait = due[interval] - loop.time()
            if wait > 0:
                try:
                    await asyncio.wait_for(self._closed.wait(), timeout=wait)
                    return
                except TimeoutError:
                    pass
            members = groups[interval]
            nodes = [client.get_node(i.node_id) for i in members if i.node_id is not None]
            stats.polls += 1
            values = await self._guard(client.read_attributes(nodes))
            received, mono = time.time(), loop.time()
            batch = []
            for item, value in zip(members, values, strict=True):
                if value.StatusCode is not None:
                    stats.flagged(value.StatusCode.value)
                batch.append(sample_of(item.signal.name, value, received, mono, self._bad))
            stats.made(batch)
            yield batch
            due[interval] += interval
            now = loop.time()
            if due[interval] <= now:
                missed = int((now - due[interval]) // interval) + 1
                stats.overruns += missed
                due[interval] += missed * interval
        if not groups:
            await self._closed.wait()

    # --- faults ----------------------------------------------------------------------------

    async def _guard(self, call: Awaitable[Any]) -> Any:
        """Await a request; a transport or service failure ends the session."""
        try:
            return await asyncio.wait_for(call, timeout=self.config.timeout_s * 2)
        except _CONNECT_ERRORS as exc:
            raise SessionLost(self._connect_reason(exc)) from exc

    def _lost_samples(self, reason: str) -> list[Sample]:
        """One BAD sample per signal not yet reported bad; the reason logged once."""
        if self._fault is None:
            self._folded_at = self._fold.folded
            log.error("opcua device %s: %s", self.name, reason,
                      extra={"device": self.name, "address": self.config.endpoint,
                             "reason": reason})
        self._fault = reason
        now, mono = time.time(), asyncio.get_running_loop().time()
        out = []
        for item in self._items:
            name = item.signal.name
            if name in self._bad:
                continue
            self._bad.add(name)
            out.append(Sample(name, None, Quality.BAD, now, mono, reason))
        self.stats.lost_samples += len(out)
        self.stats.bad_samples += len(out)
        return out
