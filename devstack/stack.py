"""A whole keyop installation on one box: broker, press simulator, hub, gateway, observer.

`keyop demo`, the end-to-end tests and benchmarks start it; the hub and the gateway run as
real processes (`keyop hub`, `keyop run`) exactly as they would in a plant.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from config import DIR as EXAMPLES
from devstack.mosquitto import PrivateBroker, free_port, wait_for_port
from simulators.modbus_device import PressDevice
from sync import topics

CONFIG_DIR = EXAMPLES
GATEWAY_ID = "edge-07"
SOURCE = f"plant1/{GATEWAY_ID}"


@dataclass
class Delivery:
    supplier: str
    topic: str
    event: dict[str, Any]
    arrived: float


@dataclass
class Observer:
    """Subscribes to every supplier's event topics (as the operator of the demo, not a supplier)."""

    host: str
    port: int
    deliveries: list[Delivery] = field(default_factory=list)
    on_delivery: Callable[[Delivery], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _client: mqtt.Client | None = None
    _subscribed: threading.Event = field(default_factory=threading.Event)

    def start(self, timeout: float = 10.0) -> None:
        subscribed = self._subscribed
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"keyop-observer-{os.getpid()}",
                             protocol=mqtt.MQTTv5)

        def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            c.subscribe("keyop/v1/sup/+/events/#", qos=1)

        def on_subscribe(*_args: Any) -> None:
            subscribed.set()

        def on_disconnect(*_args: Any) -> None:
            subscribed.clear()

        def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
            supplier = message.topic.split("/")[3]
            delivery = Delivery(supplier, message.topic, json.loads(message.payload), time.time())
            with self._lock:
                self.deliveries.append(delivery)
            if self.on_delivery is not None:
                self.on_delivery(delivery)

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_disconnect = on_disconnect
        client.reconnect_delay_set(min_delay=1, max_delay=2)
        client.on_message = on_message
        client.connect(self.host, self.port, keepalive=15)
        client.loop_start()
        self._client = client
        self.wait_subscribed(timeout)

    def wait_subscribed(self, timeout: float = 10.0) -> None:
        """Block until subscribed (again, after a broker restart); raise after `timeout`."""
        if not self._subscribed.wait(timeout):
            raise RuntimeError(f"observer could not subscribe at {self.host}:{self.port}")

    def snapshot(self) -> list[Delivery]:
        with self._lock:
            return list(self.deliveries)

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None


def wait_hub_online(host: str, port: int, timeout: float = 30.0) -> None:
    """Block until the hub's retained status says online: its ingest subscription is then in
    place (the hub subscribes before it announces itself on the same connection)."""
    wait_status_online(host, port, topics.hub_status(), timeout, "the hub")


def wait_gateway_online(host: str, port: int, gateway: str = GATEWAY_ID,
                        timeout: float = 30.0) -> None:
    """Block until the gateway's retained birth says online (its uplink is connected)."""
    wait_status_online(host, port, topics.up_status(gateway), timeout, f"gateway {gateway}")


def wait_status_online(host: str, port: int, topic: str, timeout: float, what: str) -> None:
    """Block until a retained status on `topic` says `online: true`."""
    online = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                         client_id=f"keyop-wait-{os.getpid()}-{time.monotonic_ns()}")

    def on_connect(c: mqtt.Client, *_args: Any) -> None:
        c.subscribe(topic, qos=1)

    def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        with contextlib.suppress(ValueError):
            if json.loads(message.payload).get("online") is True:
                online.set()

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(host, port, keepalive=15)
    client.loop_start()
    try:
        if not online.wait(timeout):
            raise TimeoutError(f"{what} did not come online at {host}:{port} in {timeout}s")
    finally:
        client.disconnect()
        client.loop_stop()


def _dump(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Stack:
    """Start and stop the parts; files (configs, logs, databases) live in `workdir`."""

    def __init__(self, workdir: Path | None = None, broker: str | None = None,
                 progress_every: int = 5, *, poll_interval: str | None = None,
                 gateway_overrides: dict[str, dict[str, Any]] | None = None,
                 log_level: str = "INFO",
                 hub_overrides: dict[str, Any] | None = None,
                 board_users: dict[str, tuple[str | None, str]] | None = None) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="keyop-stack-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.external_broker = broker
        self.broker: PrivateBroker | None = None
        self.device = PressDevice(good=2**32 - 12)  # the good counter rolls over early on
        self.progress_every = progress_every
        self.poll_interval = poll_interval
        """Override every signal's poll interval (fault tests: more packets per second)."""
        self.gateway_overrides = gateway_overrides or {}
        """Sections of gateway.yaml to update (`{"outbox": {"max_packets": 500}}`)."""
        self.log_level = log_level
        self.gateway_env: dict[str, str] = {}
        """Extra environment of the next gateway processes (e.g. `NOTIFY_SOCKET`)."""
        self.hub_overrides = hub_overrides or {}
        """Sections of hub.yaml to update (`{"alerts": {"interval_s": 1}}`)."""
        self.board_users = board_users or {}
        """Board users: name -> (supplier, or None for the plant; password)."""
        self.gateway_starts = 0
        self.hub: subprocess.Popen[bytes] | None = None
        self.gateway: subprocess.Popen[bytes] | None = None
        self.observer: Observer | None = None
        self.host, self.port = "127.0.0.1", 0
        self.api_port = free_port()
        # The hub's API (and board) port: fixed for the stack, so a restarted hub is found
        # where it was (an open board page reconnects to it).
        self.hub_api_port = free_port()

    # -- configuration ---------------------------------------------------------------------

    @property
    def hub_db_url(self) -> str:
        return f"sqlite:///{self.workdir / 'hub.db'}"

    @property
    def outbox_path(self) -> Path:
        return self.workdir / "outbox.db"

    def write_configs(self, device_port: int) -> tuple[Path, Path]:
        mapping = yaml.safe_load((CONFIG_DIR / "mapping.yaml").read_text())
        mapping["sources"]["press-1"]["port"] = device_port
        mapping["stations"]["press-1"]["progress"]["every"] = self.progress_every
        if self.poll_interval is not None:
            for signal_spec in mapping["signals"].values():
                signal_spec["interval"] = self.poll_interval
        _dump(self.workdir / "mapping.yaml", mapping)
        gateway = yaml.safe_load((CONFIG_DIR / "gateway.yaml").read_text())
        gateway["mapping"] = "mapping.yaml"
        gateway["outbox"]["path"] = str(self.outbox_path)
        gateway["mqtt"].update(host=self.host, port=self.port, ack_timeout="3s")
        for section, values in self.gateway_overrides.items():
            gateway.setdefault(section, {}).update(values)
        gateway["api"] = {"host": "127.0.0.1", "port": self.api_port}
        gateway_file = _dump(self.workdir / "gateway.yaml", gateway)
        hub = yaml.safe_load((CONFIG_DIR / "hub.yaml").read_text())
        hub["hub"]["database"] = self.hub_db_url
        hub["api"]["port"] = self.hub_api_port
        hub["mqtt"].update(host=self.host, port=self.port, client_id=f"keyop-hub-{os.getpid()}")
        # acme follows every order; bolt only the even-numbered ones.
        hub["routes"] = [
            {"supplier": "acme", "work_orders": ["WO-*"]},
            {"supplier": "bolt", "work_orders": ["WO-*[02468]"]},
        ]
        hub["board"] = self.board_section()
        for section, values in self.hub_overrides.items():
            if isinstance(values, dict) and isinstance(hub.get(section), dict):
                hub[section].update(values)
            else:
                hub[section] = values
        hub_file = _dump(self.workdir / "hub.yaml", hub)
        return gateway_file, hub_file

    def board_section(self) -> dict[str, Any]:
        """config/board-demo.yaml with the stack's board users (passwords hashed here)."""
        from hub.board.passwords import hash_password

        board: dict[str, Any] = yaml.safe_load((CONFIG_DIR / "board-demo.yaml").read_text())
        users = board.setdefault("users", {})
        for name, (supplier, password) in self.board_users.items():
            entry: dict[str, Any] = {"password_hash": hash_password(password)}
            entry.update({"plant": True} if supplier is None else {"supplier": supplier})
            users[name] = entry
        return board

    # -- processes -------------------------------------------------------------------------

    def _spawn(self, name: str, *args: str,
               env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "--log-level", self.log_level, *args],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=self.workdir, env={**os.environ, **env} if env else None,
        )

    def start_hub(self) -> None:
        self.hub = self._spawn("hub", "hub", "-c", str(self.workdir / "hub.yaml"))

    def start_gateway(self) -> None:
        self.gateway = self._spawn("gateway", "run", "-c", str(self.workdir / "gateway.yaml"),
                                   env=self.gateway_env)
        self.gateway_starts += 1

    @staticmethod
    def _stop(process: subprocess.Popen[bytes] | None, *, kill: bool = False,
              timeout: float = 20.0) -> int | None:
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        return process.returncode

    def stop_gateway(self, *, kill: bool = False) -> int | None:
        code, self.gateway = self._stop(self.gateway, kill=kill), None
        return code

    def stop_hub(self, *, kill: bool = False) -> int | None:
        code, self.hub = self._stop(self.hub, kill=kill), None
        return code

    async def start(self) -> None:
        """Everything: `prepare`, then the hub and the gateway."""
        await self.prepare()
        self.start_hub()
        await asyncio.to_thread(wait_hub_online, self.host, self.port)
        self.start_gateway()

    async def prepare(self) -> None:
        """The broker, the device, the configs and the observer; no keyop process yet."""
        if self.external_broker:
            host, _, port = self.external_broker.rpartition(":")
            self.host, self.port = host or "127.0.0.1", int(port)
            if not wait_for_port(self.host, self.port, 5):
                raise RuntimeError(f"no broker answers at {self.host}:{self.port}")
        else:
            self.broker = PrivateBroker(workdir=self.workdir / "broker").start()
            self.host, self.port = self.broker.host, self.broker.port
        device_port = await self.device.start()
        self.write_configs(device_port)
        self.observer = Observer(self.host, self.port)
        self.observer.start()

    async def wait_polled(self, timeout: float = 30.0) -> None:
        """Wait until the gateway reads the device: only then is every edge seen."""
        deadline = time.monotonic() + timeout
        first = self.device.read_requests
        while self.device.read_requests < first + 3:
            if self.gateway is not None and self.gateway.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.gateway.returncode}: "
                                   f"see {self.workdir / 'gateway.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError("the gateway did not poll the device")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        self.stop_gateway()
        self.stop_hub()
        if self.observer is not None:
            self.observer.stop()
        await self.device.stop()
        if self.broker is not None:
            self.broker.stop()
