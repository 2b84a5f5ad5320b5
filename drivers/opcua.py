"""OPC UA driver (asyncua): subscriptions (or polling reads), security, reconnect.

Contract (see `drivers.base.Driver`):
- `samples()` connects on first use. Nodes (NodeIds and browse paths, `drivers.opcua_nodes`)
  are resolved at every connect; a node the server does not have gives one `BAD` sample
  (`node_missing: ...` naming the signal and the node) and the other signals carry on.
- Subscribe mode: one subscription per publishing interval (the signals' `interval`), one
  monitored item per signal with its sampling interval, queue size and absolute deadband.
  asyncua's publish loop only enqueues (its iterator queue, pumped into ours); the values are
  turned into samples in the driver's own generator. Poll mode: one `Read` of all nodes of
  an interval group per cycle, on monotonic deadlines (late cycles skipped, `overruns`).
- Time and quality: the source timestamp (else the server's, else receive time) is the
  sample's `time`; the status code's severity gives good / uncertain / bad, with the status
  name as the reason.
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
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from asyncua import Client, ua
from asyncua.common.subscription import DataChangeEvent, StatusChangeEvent, Subscription

from drivers.base import ConfigError, Quality, Sample
from drivers.opcua_nodes import (
    NodeRef,
    OpcUaSecurity,
    OpcUaSignal,
    check_security,
    check_signal,
    epoch_of,
    plain,
    quality_of,
    resolve_nodes,
)
from drivers.opcua_security import apply_security, connect_reason

__all__ = ["OpcUaDeviceConfig", "OpcUaDriver", "OpcUaSecurity", "OpcUaSignal"]

log = logging.getLogger(__name__)

#: Bound of the driver's notification queue; when full the newest is dropped and counted.
QUEUE_BOUND = 100_000
_CONNECT_ERRORS = (OSError, TimeoutError, ConnectionError, ua.UaError, ValueError)


@dataclass(frozen=True, slots=True)
class OpcUaDeviceConfig:
    """One OPC UA server and the signals read from it (`mode`: subscribe or poll)."""

    name: str
    endpoint: str
    signals: tuple[OpcUaSignal, ...] = ()
    mode: str = "subscribe"
    security: OpcUaSecurity = field(default_factory=OpcUaSecurity)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = 4.0
    keepalive_s: float = 2.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    backoff_jitter: float = 0.2


class _Lost(Exception):
    """The session is gone; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_LOST = object()  # queue marker: the session failed
_CLOSED = object()  # queue marker: close() was called


@dataclass
class _Item:
    signal: OpcUaSignal
    ref: NodeRef
    node_id: ua.NodeId | None = None


class OpcUaDriver:
    """Reads one OPC UA server (see the module docstring).

    Counters: `notifications` (data changes received), `reconnects` (sessions after the
    first), `connect_failures`, `dropped` (notifications lost to a full queue), `overruns`.
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
        self._items: list[_Item] = []
        for signal in config.signals:
            if signal.name in seen:
                raise ConfigError(f"signal {signal.name!r}: defined twice")
            seen.add(signal.name)
            self._items.append(_Item(signal, check_signal(signal)))
        self.config = config
        self.name = config.name
        self.notifications = 0
        self.reconnects = 0
        self.connect_failures = 0
        self.dropped = 0
        self.overruns = 0
        #: Seconds of the current backoff wait before the next connect attempt.
        self.current_wait_s = 0.0
        self._rng = rng or random.Random()
        self._closed = asyncio.Event()
        self._queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE_BOUND)
        self._client: Client | None = None
        self._fault: str | None = None
        self._bad: set[str] = set()  # signals whose last sample was BAD
        self._missing: set[str] = set()  # signals whose node the server does not have
        self._connected_once = False

    # --- the sample stream -----------------------------------------------------------------

    async def samples(self) -> AsyncIterator[Sample]:
        """Connect, stream samples, reconnect on loss, until `close()`."""
        delay = self.config.backoff_initial_s
        while not self._closed.is_set():
            try:
                client = await self._connect()
            except _Lost as lost:
                if self._closed.is_set():
                    return
                self.connect_failures += 1
                for sample in self._lost_samples(lost.reason):
                    yield sample
                if await self._backoff(delay):
                    return
                delay = min(delay * 2, self.config.backoff_max_s)
                continue
            delay = self.config.backoff_initial_s
            try:
                stream = self._subscribe(client) if self.config.mode == "subscribe" else (
                    self._poll(client))
                async for sample in stream:
                    if self._closed.is_set():
                        return
                    yield sample
            except _Lost as lost:
                for sample in self._lost_samples(lost.reason):
                    if self._closed.is_set():
                        return
                    yield sample
            finally:
                await self._disconnect()
            if self._closed.is_set():
                return
            if await self._backoff(delay):
                return
            delay = min(delay * 2, self.config.backoff_max_s)

    async def close(self) -> None:
        """Stop and disconnect; no sample is yielded after this returns."""
        self._closed.set()
        self._put(_CLOSED)
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

    def _put(self, item: object) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            if item is _LOST or item is _CLOSED:
                self._queue.get_nowait()  # markers must land; a data change may go
                self._queue.put_nowait(item)
            self.dropped += 1

    # --- connecting ------------------------------------------------------------------------

    async def _connect(self) -> Client:
        cfg = self.config
        client = Client(cfg.endpoint, timeout=cfg.timeout_s, watchdog_intervall=cfg.keepalive_s)
        client.session_timeout = 60_000  # ms; a dead session must not linger an hour
        client.name = client.description = f"keyop {cfg.name}"
        if cfg.username:
            client.set_user(cfg.username)
            if cfg.password is not None:
                client.set_password(cfg.password)
        while not self._queue.empty():  # leftovers of a previous session
            self._queue.get_nowait()

        async def on_lost(exc: Exception) -> None:
            self._put(_LOST)

        client.connection_lost_callback = on_lost
        try:
            await asyncio.wait_for(apply_security(client, cfg.security),
                                   timeout=cfg.timeout_s * 2)
            await asyncio.wait_for(client.connect(), timeout=cfg.timeout_s * 2)
        except _CONNECT_ERRORS as exc:
            await self._quiet_disconnect(client)
            raise _Lost(self._connect_reason(exc)) from exc
        if self._closed.is_set():  # close() ran while we were connecting
            await self._quiet_disconnect(client)
            raise _Lost("closed")
        self._client = client
        if self._connected_once:
            self.reconnects += 1
        self._connected_once = True
        if self._fault is not None:
            log.info("opcua device %s: connected again after %s", self.name, self._fault,
                     extra={"device": self.name, "address": cfg.endpoint, "reason": "recovered"})
            self._fault = None
        return client

    def _connect_reason(self, exc: BaseException) -> str:
        cfg = self.config
        return connect_reason(exc, endpoint=cfg.endpoint, timeout_s=cfg.timeout_s,
                              trust_dir=cfg.security.trust_dir)

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await self._quiet_disconnect(client)

    async def _quiet_disconnect(self, client: Client) -> None:
        try:
            await asyncio.wait_for(client.disconnect(), timeout=self.config.timeout_s)
        except (*_CONNECT_ERRORS, RuntimeError):
            pass  # the server is gone already; the socket is closed either way

    async def _resolve(self, client: Client) -> tuple[list[_Item], list[Sample]]:
        """Resolve every node; the items found, and a BAD sample per node that is missing."""
        resolved = await resolve_nodes(client, [i.ref for i in self._items])
        missing: list[tuple[_Item, str]] = []
        for item, node in zip(self._items, resolved, strict=True):
            if isinstance(node, str):
                missing.append((item, node))
            else:
                item.node_id = node
        now, mono = time.time(), asyncio.get_running_loop().time()
        bad = []
        for item, status in missing:
            item.node_id = None
            if item.signal.name in self._missing:
                continue  # reported at an earlier connect; quiet until it is found
            reason = (f"node_missing: signal {item.signal.name!r}: node {item.ref.text!r} not "
                      f"found on {self.config.endpoint} ({status})")
            self._missing.add(item.signal.name)
            log.error("opcua device %s: %s", self.name, reason,
                      extra={"device": self.name, "address": item.ref.text, "reason": reason})
            self._bad.add(item.signal.name)
            bad.append(Sample(item.signal.name, None, Quality.BAD, now, mono, reason))
        found = [i for i in self._items if i.node_id is not None]
        self._missing.difference_update(i.signal.name for i in found)
        return found, bad

    # --- subscribe mode --------------------------------------------------------------------

    async def _subscribe(self, client: Client) -> AsyncIterator[Sample]:
        items, bad = await self._guard(self._resolve(client))
        for sample in bad:
            yield sample
        names: dict[int, str] = {}
        groups: dict[float, list[tuple[int, _Item]]] = {}
        for handle, item in enumerate(items, start=1):
            names[handle] = item.signal.name
            groups.setdefault(item.signal.interval_s, []).append((handle, item))
        pumps = []
        try:
            for interval, members in groups.items():
                sub = await self._guard(client.create_subscription(
                    interval * 1000, None, queue_maxsize=QUEUE_BOUND))
                for sample in await self._guard(self._monitor(sub, members)):
                    yield sample
                pumps.append(asyncio.create_task(self._pump(sub), name=f"opcua:{self.name}"))
            async for sample in self._drain(names):
                yield sample
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _monitor(self, sub: Subscription, members: list[tuple[int, _Item]]) -> list[Sample]:
        requests = []
        for handle, item in members:
            signal = item.signal
            params = ua.MonitoringParameters()
            params.ClientHandle = handle
            sampling = signal.interval_s if signal.sampling_s is None else signal.sampling_s
            params.SamplingInterval = sampling * 1000
            params.QueueSize = signal.queue_size
            params.DiscardOldest = True
            if signal.deadband is not None:
                params.Filter = ua.DataChangeFilter(
                    Trigger=ua.DataChangeTrigger.StatusValue,
                    DeadbandType=ua.DeadbandType.Absolute,
                    DeadbandValue=signal.deadband,
                )
            request = ua.MonitoredItemCreateRequest()
            request.ItemToMonitor = ua.ReadValueId(NodeId=item.node_id,
                                                   AttributeId=ua.AttributeIds.Value)
            request.MonitoringMode = ua.MonitoringMode.Reporting
            request.RequestedParameters = params
            requests.append(request)
        results = await sub.create_monitored_items(requests)
        now, mono = time.time(), asyncio.get_running_loop().time()
        bad = []
        for (_, item), result in zip(members, results, strict=True):
            if isinstance(result, ua.StatusCode):
                reason = (f"opcua_status: monitored item for {item.ref.text!r} refused: "
                          f"{result.name}")
                log.error("opcua device %s: %s", self.name, reason,
                          extra={"device": self.name, "address": item.ref.text,
                                 "reason": reason})
                bad.append(Sample(item.signal.name, None, Quality.BAD, now, mono, reason))
        return bad

    async def _pump(self, sub: Subscription) -> None:
        """asyncua's side: only move events into the driver's queue."""
        put = self._put
        async for event in sub:
            put(event)

    async def _drain(self, names: dict[int, str]) -> AsyncIterator[Sample]:
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            event = await queue.get()
            if isinstance(event, DataChangeEvent):
                # Decoding here, in the driver's task: status, timestamps, value.
                notification = event.data.monitored_item
                value = notification.Value
                name = names.get(notification.ClientHandle)
                if name is None:
                    continue
                self.notifications += 1
                received = time.time()
                quality, reason = quality_of(value.StatusCode)
                stamp = value.SourceTimestamp or value.ServerTimestamp
                inner = value.Value.Value if value.Value is not None else None
                if quality is Quality.GOOD:
                    if self._bad:
                        self._bad.discard(name)
                    yield Sample(name, plain(inner), quality, epoch_of(stamp, received),
                                 loop.time())
                else:
                    yield Sample(name, plain(inner) if quality is Quality.UNCERTAIN else None,
                                 quality, epoch_of(stamp, received), loop.time(), reason)
            elif isinstance(event, StatusChangeEvent):
                status = event.notification.Status
                if status is not None and not status.is_good():
                    raise _Lost(f"comm_lost: subscription on {self.config.endpoint} ended: "
                                f"{status.name}")
            elif event is _LOST:
                raise _Lost(f"comm_lost: session with {self.config.endpoint} lost "
                            f"(keep-alive failed)")
            elif event is _CLOSED:
                return

    # --- poll mode -------------------------------------------------------------------------

    async def _poll(self, client: Client) -> AsyncIterator[Sample]:
        items, bad = await self._guard(self._resolve(client))
        for sample in bad:
            yield sample
        loop = asyncio.get_running_loop()
        groups: dict[float, list[_Item]] = {}
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
            values = await self._guard(client.read_attributes(nodes))
            received, mono = time.time(), loop.time()
            for item, value in zip(members, values, strict=True):
                yield self._sample(item.signal.name, value, received, mono)
            due[interval] += interval
            now = loop.time()
            if due[interval] <= now:
                missed = int((now - due[interval]) // interval) + 1
                self.overruns += missed
                due[interval] += missed * interval
        if not groups:
            await self._closed.wait()

    def _sample(self, name: str, value: ua.DataValue, received: float, mono: float) -> Sample:
        quality, reason = quality_of(value.StatusCode)
        stamp = value.SourceTimestamp or value.ServerTimestamp
        inner = value.Value.Value if value.Value is not None else None
        if quality is Quality.GOOD:
            self._bad.discard(name)
            return Sample(name, plain(inner), quality, epoch_of(stamp, received), mono)
        shown = plain(inner) if quality is Quality.UNCERTAIN else None
        return Sample(name, shown, quality, epoch_of(stamp, received), mono, reason)

    # --- faults ----------------------------------------------------------------------------

    async def _guard(self, call: Any) -> Any:
        """Await a request; a transport or service failure ends the session."""
        try:
            return await asyncio.wait_for(call, timeout=self.config.timeout_s * 2)
        except _CONNECT_ERRORS as exc:
            raise _Lost(self._connect_reason(exc)) from exc

    def _lost_samples(self, reason: str) -> list[Sample]:
        """One BAD sample per signal not yet reported bad; the reason logged once."""
        if self._fault is None:
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
        return out
