"""An OPC UA PLC (asyncua server) with a welding and an assembly station, for tests and demos.

Address space (namespace `urn:keyop:sim:plc`, index 2 on a fresh server), per station S in
`W1` (welding) and `A1` (assembly), below `/Objects/2:Line3/2:S`:

| node (NodeId `ns=2;s=Line3.S.<name>`) | type   | meaning                                      |
|---------------------------------------|--------|----------------------------------------------|
| `Busy`        | Boolean | 1 while the station produces an order                     |
| `CycleDone`   | Boolean | pulses True then False at the end of every cycle          |
| `Reject`      | Boolean | pulses True then False when a cycle produces scrap        |
| `PartCount`   | UInt32  | good-part counter (wraps at 2**32)                        |
| `RejectCount` | UInt32  | scrap counter                                             |
| `Current`     | Double  | welding / press-fit current in A: ~180 while busy, 0 idle |
| `Order`       | UInt32  | work order number (1001 = "WO-1001"), 0 = none            |
| `Planned`     | UInt16  | planned quantity of the current order                     |

Every value is written with a source timestamp. `PlcStation` is a scenario `Device`, so
`simulators.scenario.run(station, scenario)` drives it and knows the ground truth. Optional
`bench_items` adds `/Objects/2:Bench/2:V0..` (Double) that change every `bench_change_s`.

Fault switches: `stop()`/`start()` on the same port (listener and sessions cut, values kept;
`close()` shuts down for good), `bad_status` (every write
carries that status code, e.g. `BadDeviceFailure`, until cleared), `slow_s` (each write is
delayed, like a PLC whose cycle is late). Security: `security_dir` makes the server offer
only Basic256Sha256 / Aes128Sha256RsaOaep / Aes256Sha256RsaPss (Sign and SignAndEncrypt)
with a certificate generated there (`generate_certificate`); with `trust_clients`, only client
certificates in `<security_dir>/trusted-clients` are accepted. `users` (name -> password)
refuses anonymous sessions and wrong passwords.

Command line: `python -m simulators.opcua_plc --port 4840 [--loop] [--seed N]
[--bench-items N --bench-change 100ms]`; the first stdout line is `{"listening": "opc.tcp://..."}`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import signal
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from asyncua import Server, ua
from asyncua.crypto.cert_gen import (
    dump_private_key_as_pem,
    generate_private_key,
    generate_self_signed_app_certificate,
)
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.binary_server_asyncio import BinaryServer
from asyncua.server.monitored_item_service import MonitoredItemValues
from asyncua.server.user_managers import UserManager
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from simulators.scenario import Scenario, run

NAMESPACE = "urn:keyop:sim:plc"
SERVER_URI = "urn:keyop:sim:plc:server"
STATIONS = ("W1", "A1")
_SECURE_POLICIES = [
    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ua.SecurityPolicyType.Basic256Sha256_Sign,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
]
_TYPES = {
    "Busy": (False, ua.VariantType.Boolean),
    "CycleDone": (False, ua.VariantType.Boolean),
    "Reject": (False, ua.VariantType.Boolean),
    "PartCount": (0, ua.VariantType.UInt32),
    "RejectCount": (0, ua.VariantType.UInt32),
    "Current": (0.0, ua.VariantType.Double),
    "Order": (0, ua.VariantType.UInt32),
    "Planned": (0, ua.VariantType.UInt16),
}


def generate_certificate(folder: Path, name: str, uri: str, *, server: bool) -> tuple[Path, Path]:
    """A self-signed application certificate (DER) and key (PEM) in `folder`; returns paths."""
    folder.mkdir(parents=True, exist_ok=True)
    key = generate_private_key()
    host = socket.gethostname()
    cert = generate_self_signed_app_certificate(
        key,
        name,
        {"organizationName": "keyop"},
        [x509.UniformResourceIdentifier(uri), x509.DNSName(host), x509.DNSName("localhost")],
        extended=[ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    cert_path, key_path = folder / f"{name}.der", folder / f"{name}.key.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    key_path.write_bytes(dump_private_key_as_pem(key))
    return cert_path, key_path


def _skip_value_copies() -> None:
    """Make asyncua's server keep written DataValues as they are instead of deep copies.

    asyncua deep-copies every value a monitored item sees (about 250 us per change), to guard
    against callers mutating a value after writing it. This simulator writes a new DataValue
    every time and never touches it again, and without the copy one server process can
    produce 10,000 changes/s for the subscription benchmark. Server-side only.
    """

    def keep(self: MonitoredItemValues, cur_val: ua.DataValue) -> None:
        self.old_dvalue = self.current_dvalue
        self.current_dvalue = cur_val

    MonitoredItemValues.set_current_datavalue = keep  # type: ignore[method-assign]


def _nid(name: str, ns: int) -> ua.NodeId:
    return ua.NodeId(ua.String(name), ua.Int16(ns))


def _now() -> ua.DateTime:
    return cast(ua.DateTime, datetime.now(UTC))


class _Users(UserManager):
    """Username/password pairs; anonymous sessions are refused."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


class PlcStation:
    """One station's values; a scenario `Device` (sync methods, the server writes them)."""

    def __init__(self, plc: OpcUaPlc, station: str, rng: random.Random) -> None:
        self._plc = plc
        self.station = station
        self._rng = rng
        self.values: dict[str, object] = {name: v for name, (v, _) in _TYPES.items()}

    @property
    def good(self) -> int:
        count = self.values["PartCount"]
        assert isinstance(count, int)
        return count

    @property
    def scrap(self) -> int:
        count = self.values["RejectCount"]
        assert isinstance(count, int)
        return count

    def _set(self, name: str, value: object) -> None:
        self.values[name] = value
        self._plc.publish(self.station, name, value)

    def set_order(self, number: int, planned: int) -> None:
        self._set("Order", number)
        self._set("Planned", planned)

    def set_busy(self, busy: bool) -> None:
        self._set("Busy", busy)
        self._set("Current", round(180 + self._rng.uniform(-5, 5), 2) if busy else 0.0)

    def count_good(self) -> int:
        self._set("PartCount", (self.good + 1) % 2**32)
        self._pulse("CycleDone")
        return self.good

    def count_scrap(self) -> int:
        self._set("RejectCount", (self.scrap + 1) % 2**32)
        self._pulse("Reject")
        self._pulse("CycleDone")
        return self.scrap

    def _pulse(self, name: str) -> None:
        self._set(name, True)
        self._set(name, False)
        self._set("Current", round(180 + self._rng.uniform(-5, 5), 2))


class OpcUaPlc:
    """The server: stations W1 and A1, optional bench variables, fault switches."""

    def __init__(self, *, seed: int = 0, security_dir: Path | None = None,
                 trust_clients: bool = False, bench_items: int = 0,
                 bench_change_s: float = 0.1, users: dict[str, str] | None = None) -> None:
        rng = random.Random(seed)
        self.stations = {s: PlcStation(self, s, rng) for s in STATIONS}
        self.security_dir = security_dir
        self.trust_clients = trust_clients
        self.bench_items = bench_items
        self.bench_change_s = bench_change_s
        #: When set, only these username/password pairs may open a session.
        self.users = users
        #: Status code every write carries while set (fault injection), e.g. BadDeviceFailure.
        self.bad_status: int | None = None
        #: Seconds to hold every write (fault injection: a late PLC cycle).
        self.slow_s = 0.0
        self.server_cert: Path | None = None
        self._server: Server | None = None
        self._nodes: dict[tuple[str, str], ua.NodeId] = {}
        self._writes: asyncio.Queue[tuple[ua.NodeId, ua.DataValue]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._port = 0
        self._host = "127.0.0.1"
        self._listening = False
        if security_dir is not None:
            self.server_cert, self.server_key = generate_certificate(
                security_dir, "plc-server", SERVER_URI, server=True)

    @property
    def port(self) -> int:
        return self._port

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self._host}:{self._port}/keyop/plc"

    @property
    def running(self) -> bool:
        """True while the server listens."""
        return self._listening

    def node_id(self, station: str, name: str) -> str:
        """The NodeId string of a station variable (namespace index 2)."""
        return f"ns=2;s=Line3.{station}.{name}"

    def publish(self, station: str, name: str, value: object) -> None:
        node = self._nodes.get((station, name))
        # A PLC whose network is cut still counts: values change while stopped too.
        if node is not None and self._server is not None:
            self._writes.put_nowait((node, self._datavalue(name, value)))

    def _datavalue(self, name: str, value: object) -> ua.DataValue:
        _, vtype = _TYPES.get(name, (0.0, ua.VariantType.Double))
        status = ua.StatusCode(ua.UInt32(self.bad_status or 0))
        now = _now()
        return ua.DataValue(ua.Variant(value, vtype), StatusCode=status,
                            SourceTimestamp=now, ServerTimestamp=now)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve on host:port (0 = a free port); after `stop()`, listen again on the same port.

        The first start builds the server (asyncua loads its standard address space, which
        takes a few seconds); a restart after `stop()` only opens the listener again.
        """
        if self._server is not None:
            if self._listening:
                raise RuntimeError("OPC UA PLC already running")
            await self._listen(self._server)
            return self._port
        if port == 0:
            with socket.socket() as probe:
                probe.bind((host, 0))
                port = probe.getsockname()[1]
        self._host, self._port = host, port
        _skip_value_copies()
        server = Server(user_manager=_Users(self.users) if self.users is not None else None)
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("keyop simulated PLC")
        await server.set_application_uri(SERVER_URI)
        if self.security_dir is not None and self.server_cert is not None:
            server.set_security_policy(_SECURE_POLICIES)
            await server.load_certificate(str(self.server_cert))
            await server.load_private_key(str(self.server_key))
            if self.trust_clients:
                trusted = self.security_dir / "trusted-clients"
                trusted.mkdir(exist_ok=True)
                store = TrustStore([trusted], [])
                await store.load()
                server.set_certificate_validator(CertificateValidator(
                    CertificateValidatorOptions.TIME_RANGE | CertificateValidatorOptions.TRUSTED
                    | CertificateValidatorOptions.PEER_CLIENT, store))
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace(NAMESPACE)
        objects = server.nodes.objects
        line = await objects.add_object(_nid("Line3", idx), ua.QualifiedName("Line3", idx))
        self._nodes.clear()
        for station, state in self.stations.items():
            folder = await line.add_object(_nid(f"Line3.{station}", idx),
                                           ua.QualifiedName(station, idx))
            for name, (_, vtype) in _TYPES.items():
                node_id = _nid(f"Line3.{station}.{name}", idx)
                await folder.add_variable(node_id, ua.QualifiedName(name, idx),
                                          ua.Variant(state.values[name], vtype))
                self._nodes[(station, name)] = node_id
                await server.write_attribute_value(node_id,
                                                   self._datavalue(name, state.values[name]))
        bench: list[ua.NodeId] = []
        if self.bench_items:
            folder = await objects.add_object(_nid("Bench", idx),
                                              ua.QualifiedName("Bench", idx))
            for i in range(self.bench_items):
                node_id = _nid(f"Bench.V{i}", idx)
                await folder.add_variable(node_id, ua.QualifiedName(f"V{i}", idx), 0.0)
                bench.append(node_id)
        await server.start()
        self._server = server
        self._listening = True
        self._tasks = [asyncio.create_task(self._writer(server))]
        if bench:
            self._tasks.append(asyncio.create_task(self._bench(server, bench)))
        return port

    async def stop(self) -> None:
        """The 'PLC off' fault: stop listening and cut every connection; values are kept."""
        server = self._server
        if server is None or not self._listening:
            return
        self._listening = False
        # asyncua has no public "close the listener only"; its BinaryServer is the listener.
        if server.bserver is not None:
            await server.bserver.stop()

    async def _listen(self, server: Server) -> None:
        listener = BinaryServer(server.iserver, self._host, self._port, server.limits)
        listener.set_policies(server._policies)
        await listener.start()
        server.bserver = listener
        self._listening = True

    async def close(self) -> None:
        """Shut the server down for good."""
        server, self._server = self._server, None
        self._listening = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        while not self._writes.empty():
            self._writes.get_nowait()
        if server is not None:
            await server.stop()

    async def _writer(self, server: Server) -> None:
        while True:
            node, value = await self._writes.get()
            if self.slow_s > 0:
                await asyncio.sleep(self.slow_s)
            await server.write_attribute_value(node, value)

    async def _bench(self, server: Server, nodes: list[ua.NodeId]) -> None:
        loop = asyncio.get_running_loop()
        deadline, tick = loop.time(), 0
        while True:
            tick += 1
            now = _now()
            for i, node in enumerate(nodes):
                value = ua.DataValue(ua.Variant(math.sin(tick * 0.1 + i) + tick,
                                                ua.VariantType.Double),
                                     SourceTimestamp=now, ServerTimestamp=now)
                await server.write_attribute_value(node, value)
            deadline += self.bench_change_s
            await asyncio.sleep(max(0.0, deadline - loop.time()))


# --- command line --------------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> None:
    plc = OpcUaPlc(seed=args.seed, bench_items=args.bench_items,
                   bench_change_s=args.bench_change_ms / 1000,
                   security_dir=Path(args.security_dir) if args.security_dir else None)
    await plc.start(args.host, args.port)
    print(json.dumps({"listening": plc.endpoint, "time": time.time()}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        if args.bench_items:
            await stop.wait()
        else:
            scenario = Scenario(seed=args.seed, loop=args.loop)
            await asyncio.gather(*(run(s, scenario, stop) for s in plc.stations.values()))
            await stop.wait()
    finally:
        await plc.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m simulators.opcua_plc`."""
    parser = argparse.ArgumentParser(description="Simulated PLC (OPC UA): welding + assembly")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4840)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loop", action="store_true", help="repeat the plan with new orders")
    parser.add_argument("--bench-items", type=int, default=0, help="variables for benchmarks")
    parser.add_argument("--bench-change-ms", type=float, default=100.0)
    parser.add_argument("--security-dir", default=None,
                        help="offer only secure endpoints, certificate generated here")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
