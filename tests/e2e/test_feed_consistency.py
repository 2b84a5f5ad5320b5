"""Every channel of one supplier carries its feed: the same events, in the same order, each
`id` at least once, none missing, no cursor skipping, through assignments, reassignments,
alerts, a hub kill -9 and a broker restart (real processes: `keyop run` against the press
simulator, Mosquitto, `keyop hub`).

The channels follow docs/feed.md as a supplier's client would: the MQTT subscriber keeps a
persistent session and, when it finds its session gone (the broker restart), catches up
through `GET /v1/events` from the last position it processed; the REST poller pages with
`after`; the SSE follower reconnects with `Last-Event-ID`; the webhook receiver (a loopback
HTTP server, docs/webhooks.md) takes what the hub POSTs, and is down for a while. A channel is
a small class with `start`, `stop` and `seen`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from webhook_receiver import Receiver

from devstack.faults import FaultRig
from devstack.mosquitto import free_port
from devstack.stack import wait_hub_online
from hub.feed import Feed, FeedEntry
from hub.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SUPPLIER = "bolt"


@dataclass(frozen=True, slots=True)
class Seen:
    """One event as a channel delivered it."""

    position: int
    id: str
    type: str


@dataclass
class Channel:
    """What every channel shares: what it saw, in arrival order, and the positions a cursor
    of it jumped over (must stay empty)."""

    name: str
    seen: list[Seen] = field(default_factory=list)
    skips: list[tuple[int, int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)

    def take(self, position: int, event: dict[str, Any], *, cursor: int | None = None) -> None:
        with self._lock:
            last = max((s.position for s in self.seen), default=0)
            if cursor is not None and position > cursor + 1:
                self.skips.append((cursor, position))
            elif cursor is None and position > last + 1:
                self.skips.append((last, position))
            self.seen.append(Seen(position, event["id"], event["type"]))

    def last(self) -> int:
        with self._lock:
            return max((s.position for s in self.seen), default=0)

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()


class Api:
    def __init__(self, port: int, key: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.headers = {"Authorization": f"Bearer {key}"}

    def page(self, after: int, limit: int = 100) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.base}/v1/events", params={"after": after, "limit": limit},
                             headers=self.headers, timeout=5)
        response.raise_for_status()
        body = response.json()
        events: list[dict[str, Any]] = body["events"]
        assert body["next"] == str(after + len(events))  # positions have no gaps
        return events


class RestPoller(Channel):
    def __init__(self, api: Api) -> None:
        super().__init__("rest")
        self.api = api
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        cursor = 0
        while not self._stop.is_set():
            try:
                events = self.api.page(cursor)
            except httpx.HTTPError:
                self._stop.wait(0.2)  # the hub is away (killed): poll again
                continue
            for offset, event in enumerate(events, 1):
                self.take(cursor + offset, event, cursor=cursor + offset - 1)
            cursor += len(events)
            if not events:
                self._stop.wait(0.1)

    def stop(self) -> None:
        super().stop()
        self._thread.join(10)


class SseFollower(Channel):
    def __init__(self, api: Api) -> None:
        super().__init__("sse")
        self.api = api
        self.reconnects = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        last: int | None = None
        while not self._stop.is_set():
            headers = dict(self.api.headers)
            params = {"after": 0} if last is None else {}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            try:
                with httpx.stream("GET", f"{self.api.base}/v1/stream", params=params,
                                  headers=headers, timeout=httpx.Timeout(5, read=20)) as reply:
                    reply.raise_for_status()
                    last = self._read(reply, last or 0)
            except (httpx.HTTPError, OSError):
                pass
            self.reconnects += 1
            self._stop.wait(0.2)

    def _read(self, reply: httpx.Response, cursor: int) -> int:
        position: int | None = None
        for line in reply.iter_lines():
            if self._stop.is_set():
                break
            if line.startswith("id: "):
                position = int(line[4:])
            elif line.startswith("data: ") and position is not None:
                self.take(position, json.loads(line[6:]), cursor=cursor)
                cursor = position
        return cursor


class MqttSubscriber(Channel):
    """A persistent session; on a lost session, the REST catch-up docs/feed.md describes."""

    def __init__(self, host: str, port: int, api: Api) -> None:
        super().__init__("mqtt")
        self.api = api
        self.host, self.port = host, port
        self.sessions_lost = 0
        self._connected_once = False
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=SUPPLIER,
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect(self.host, self.port, keepalive=15, clean_start=False,
                            properties=props)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, _r: Any, _p: Any) -> None:
        client.subscribe(f"keyop/v1/sup/{SUPPLIER}/#", qos=1)
        if self._connected_once and not flags.session_present:
            # The broker lost the session and what it held: read it from the feed. (On the
            # network thread, so live messages wait behind the catch-up, in order.)
            self.sessions_lost += 1
            self._catch_up()
        self._connected_once = True

    def _catch_up(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            cursor = self.last()
            try:
                events = self.api.page(cursor)
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            if not events:
                return
            for offset, event in enumerate(events, 1):
                self.take(cursor + offset, event)

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        if "/state/" in message.topic:
            return  # the retained state is not a feed entry
        user = dict(message.properties.UserProperty) if message.properties else {}
        self.take(int(user["position"]), json.loads(message.payload))

    def stop(self) -> None:
        super().stop()
        self.client.disconnect()
        self.client.loop_stop()


class WebhookChannel(Channel):
    """The supplier's webhook endpoint. A batch's events hold the positions keyop-feed-first
    to -last (no type filter); they are taken in the order the receiver answered 2xx."""

    def __init__(self, receiver: Receiver) -> None:
        super().__init__("webhook")
        self.receiver = receiver

    def start(self) -> None:
        pass  # the receiver runs from the start: the hub.yaml names its port

    def last(self) -> int:
        return max((int(d.headers["keyop-feed-last"]) for d in self.receiver.accepted),
                   default=0)

    def stop(self) -> None:
        super().stop()
        for delivery in self.receiver.accepted:
            assert delivery.signed, "a delivery whose signature does not verify"
            first = int(delivery.headers["keyop-feed-first"])
            for offset, event in enumerate(delivery.events):
                self.take(first + offset, event)
        self.receiver.stop()


class Rig(FaultRig):
    """The fault rig with the supplier's keys, short alerts and a due time already past."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, cycle_s=0.04, poll_interval="20ms", seed=5)
        self.key, self.admin = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self.api_port = free_port()
        self._store: Store | None = None
        self.webhook_secret = secrets.token_hex(32)
        self.receiver = Receiver(self.webhook_secret).start()
        stack = self.stack
        write = stack.write_configs

        def write_configs(device_port: int) -> tuple[Path, Path]:
            gateway_file, hub_file = write(device_port)
            (stack.workdir / "bolt.key").write_text(self.key)
            (stack.workdir / "admin.key").write_text(self.admin)
            hub = yaml.safe_load(hub_file.read_text())
            hub["api"].update(port=self.api_port, admin_key_file="admin.key",
                              rate_per_s=1000, burst=1000, stream_poll_s=0.2)
            hub["alerts"] = {"interval_s": 1, "margin_s": 0, "stall_after_s": 2}
            hub["suppliers"][SUPPLIER]["api_key_file"] = "bolt.key"
            hub["orders"] = {"WO-5002": {"due": "2026-01-01T00:00:00Z"}}
            secret = stack.workdir / "bolt-webhook.secret"
            secret.write_text(self.webhook_secret)
            secret.chmod(0o600)
            hub["webhooks"] = {"allow": ["127.0.0.1"], "retry_min_s": 0.2, "retry_max_s": 1,
                               "poll_s": 0.2}
            hub["suppliers"][SUPPLIER]["webhooks"] = {"erp": {
                "url": self.receiver.url(), "secret_file": str(secret), "start": "oldest"}}
            hub_file.write_text(yaml.safe_dump(hub, sort_keys=False))
            return gateway_file, hub_file

        stack.write_configs = write_configs  # type: ignore[method-assign]

    def assign(self, work_order: str, suppliers: list[str]) -> None:
        response = httpx.put(
            f"http://127.0.0.1:{self.api_port}/v1/admin/orders/{work_order}/assignment",
            json={"suppliers": suppliers}, headers={"Authorization": f"Bearer {self.admin}"},
            timeout=10)
        assert response.status_code == 200, response.text

    def feed(self) -> list[FeedEntry]:
        """The supplier's whole feed, read from the hub's database."""
        if self._store is None:
            self._store = Store(self.stack.hub_db_url)
        return Feed(self._store).read(SUPPLIER, 0, 1_000_000)

    def running(self) -> str:
        """A work order with a running operation (waited for)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.feed()
            assert self._store is not None
            for state in self._store.open_states():
                if state.state == "Running":
                    return str(state.work_order)
            time.sleep(0.1)
        raise AssertionError("no running operation")

    async def close(self) -> None:
        if self._store is not None:
            self._store.close()
        await super().close()


async def wait_for(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.2)


def test_every_channel_carries_the_same_feed(tmp_path: Path) -> None:
    async def scenario() -> None:
        rig = Rig(tmp_path)
        channels: list[Channel] = []
        try:
            await rig.start()
            stack = rig.stack
            api = Api(rig.api_port, rig.key)
            mqtt_channel = MqttSubscriber(stack.host, stack.port, api)
            sse = SseFollower(api)
            webhook = WebhookChannel(rig.receiver)
            channels = [mqtt_channel, RestPoller(api), sse, webhook]
            for channel in channels:
                channel.start()
            types = lambda: {e.type for e in rig.feed()}  # noqa: E731

            await wait_for(lambda: len(rig.feed()) >= 20, "bolt's first events")
            # WO-5001 is acme's by route: assigned to bolt too, with its history as backfill.
            await asyncio.to_thread(rig.assign, "WO-5001", [SUPPLIER])
            await wait_for(lambda: "keyop.alert.delay_risk" in types(), "a delay risk")
            # The hub killed and restarted.
            stack.stop_hub(kill=True)
            await asyncio.sleep(1)
            stack.start_hub()
            await asyncio.to_thread(wait_hub_online, stack.host, stack.port, 60)
            head = len(rig.feed())
            await wait_for(lambda: all(c.last() >= head for c in channels),
                           "every channel past the kill")
            # The webhook receiver is down for a while: the hub retries, nothing is lost.
            rig.receiver.stop()
            # Reassigned away: a removed event; then the broker restarts (sessions lost).
            await asyncio.to_thread(rig.assign, "WO-5001", [])
            broker = stack.broker
            assert broker is not None
            broker.stop()
            await asyncio.sleep(2)
            broker.start()
            rig.receiver.start()
            await asyncio.to_thread(wait_hub_online, stack.host, stack.port, 60)
            await wait_for(lambda: mqtt_channel.sessions_lost >= 1, "the lost MQTT session")
            # The running order is assigned to bolt too; production pauses: it stalls.
            running = rig.running()
            await asyncio.to_thread(rig.assign, running, [SUPPLIER])
            await rig.stop_production()
            await wait_for(lambda: "keyop.alert.stalled" in types(), "a stall alert")
            rig.start_production()
            await asyncio.to_thread(rig.assign, "WO-5001", [SUPPLIER])
            await asyncio.sleep(3)
            await rig.stop_production()
            await rig.settle(60)
            await asyncio.sleep(2)  # the last alert evaluation and its fan-out
            head = len(rig.feed())
            await wait_for(lambda: all(c.last() >= head for c in channels),
                           "every channel at the end of the feed", 60)
        finally:
            for channel in channels:
                with contextlib.suppress(Exception):
                    channel.stop()
            feed = rig.feed() if rig.hub_db.exists() else []
            await rig.close()
        check(feed, channels)

    asyncio.run(scenario())


def check(feed: list[FeedEntry], channels: list[Channel]) -> None:
    assert [e.position for e in feed] == list(range(1, len(feed) + 1))
    expected = [(e.position, e.event_id) for e in feed]
    kinds = {e.type for e in feed}
    assert {"keyop.assignment.added", "keyop.assignment.removed", "keyop.alert.delay_risk",
            "keyop.alert.stalled", "keyop.operation.progress"} <= kinds, kinds
    assert any(b"keyopbackfill" in e.body for e in feed)
    for channel in channels:
        assert channel.skips == [], (channel.name, channel.skips[:5])
        first: dict[int, Seen] = {}
        for seen in channel.seen:
            earlier = first.setdefault(seen.position, seen)
            assert earlier.id == seen.id, (channel.name, seen)  # a repeat is the same event
        got = sorted((p, s.id) for p, s in first.items() if p <= len(feed))
        assert got == expected, (channel.name, len(got), len(expected))
        # Arrival order is feed order: first deliveries come in increasing positions.
        order = [s.position for s in channel.seen if first[s.position] is s]
        assert order == sorted(order), channel.name
