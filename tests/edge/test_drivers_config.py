"""Mapping sources → drivers: OPC UA and RTU sources, precise errors, the example configs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from drivers.modbus import ModbusDriver
from drivers.opcua import OpcUaDriver
from gateway.devices import build_drivers
from mapping.errors import MappingError
from mapping.load import load_mapping

ROOT = Path(__file__).resolve().parents[2]

HEAD = """\
version: 1
plant: {site: plant1, line: line-3}
stations:
  w1:
    operation: {id: OP20}
    order: {signal: w.order}
    start: rising(w.busy)
    counters: {good: {signal: w.good}}
"""


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "mapping.yaml"
    path.write_text(HEAD + body)
    return path


def problems(path: Path) -> list[str]:
    doc, compiled = load_mapping(path)
    with pytest.raises(MappingError) as info:
        build_drivers(doc, compiled)
    return [str(p) for p in info.value.problems]


def test_opcua_and_rtu_sources_build_drivers_with_shared_buses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pki").mkdir()
    for name in ("client.der", "client.pem"):
        (tmp_path / "pki" / name).write_bytes(b"x")
    monkeypatch.setenv("PLC_PASSWORD", "s3cret")
    path = write(tmp_path, """\
sources:
  plc-1:
    protocol: opcua
    endpoint: opc.tcp://127.0.0.1:4840
    security: {policy: Aes128Sha256RsaOaep, mode: Sign, certificate: pki/client.der,
               private_key: pki/client.pem, trust: pki}
    username: keyop
    password_env: PLC_PASSWORD
  rtu-1: {protocol: modbus_rtu, port: /dev/ttyUSB0, baudrate: 19200, unit: 1}
  rtu-2: {protocol: modbus_rtu, port: /dev/ttyUSB0, baudrate: 19200, unit: 2}
signals:
  w.busy:  {source: plc-1, node: "ns=2;s=Line3.W1.Busy", interval: 100ms, sampling: 50ms}
  w.good:  {source: plc-1, node: "/Objects/2:Line3/2:W1/2:PartCount", queue_size: 5}
  w.order: {source: rtu-1, address: "hr:3", type: uint32, word_order: little}
  w.temp:  {source: rtu-2, address: "ir:7", type: int16, scale: 0.1, interval: 500ms}
""")
    doc, compiled = load_mapping(path)
    drivers = build_drivers(doc, compiled)
    opcua = [d for d in drivers if isinstance(d, OpcUaDriver)]
    modbus = [d for d in drivers if isinstance(d, ModbusDriver)]
    assert len(opcua) == 1 and len(modbus) == 2
    config = opcua[0].config
    assert config.password == "s3cret" and config.username == "keyop"
    assert config.security.certificate == str(tmp_path / "pki" / "client.der")
    assert config.security.trust_dir == str(tmp_path / "pki")
    assert modbus[0].link is modbus[1].link, "one bus, one lock"
    assert [d.stagger_s for d in modbus] == [0.0, 0.25]
    assert compiled.origins["w.good"].protocol == "opcua"
    assert compiled.origins["w.good"].ref == "/Objects/2:Line3/2:W1/2:PartCount"


def test_misplaced_fields_bad_nodes_and_secrets_are_precise_errors(tmp_path: Path) -> None:
    path = write(tmp_path, """\
sources:
  plc-1: {protocol: opcua, endpoint: "opc.tcp://127.0.0.1:4840", password_env: NOPE_NOT_SET}
  plc-2: {protocol: opcua, endpoint: "opc.tcp://127.0.0.1:4841", security: {
            policy: Basic256Sha256, mode: Sign, certificate: no.der, private_key: no.pem}}
  press: {protocol: modbus_tcp, host: 127.0.0.1}
  rtu-a: {protocol: modbus_rtu, port: /dev/ttyS0, baudrate: 9600}
  rtu-b: {protocol: modbus_rtu, port: /dev/ttyS0, baudrate: 19200, unit: 2}
  scan-1: {protocol: serial, port: /dev/ttyS0}
signals:
  w.busy:  {source: plc-1, node: "ns=2;x=1"}
  w.good:  {source: plc-1, address: "hr:1"}
  w.order: {source: press, node: "ns=2;s=X"}
  w.a:     {source: press, address: "hr:1.3", type: uint16}
  w.b:     {source: rtu-a, address: "co:1"}
  w.c:     {source: rtu-b, address: "hr:1"}
  w.d:     {source: plc-2, node: "i=2258"}
  w.e:     {source: scan-1}
""")
    found = problems(path)
    lines = path.read_text().splitlines()

    def at(fragment: str, message: str) -> str:
        line = next(i for i, text in enumerate(lines, 1) if fragment in text)
        hits = [p for p in found if p.startswith(f"{path}:{line}:") and p.endswith(message)]
        assert len(hits) == 1, (fragment, message, found)
        return hits[0]

    at("password_env: NOPE", "source 'plc-1': environment variable NOPE_NOT_SET is not set")
    at("w.busy:", "signal 'w.busy': node 'ns=2;x=1': expected a NodeId (ns=2;s=Name, "
       "ns=2;i=42, ns=2;g=GUID) or a browse path (/Objects/2:Line3/2:Busy)")
    at("w.good:", "signal 'w.good': address does not apply to opcua source 'plc-1'")
    at("w.order:", "signal 'w.order': node does not apply to modbus_tcp source 'press'")
    at("w.a:", "signal 'w.a': address 'hr:1.3': type 'uint16': a register bit is read as bool")
    at("rtu-b:", "source 'rtu-b': serial port /dev/ttyS0 is shared with other sources, "
       "which use other line settings")
    # At the field that names the missing file, not at its source.
    at("mode: Sign, certificate: no.der", f"source 'plc-2': security certificate: no file "
       f"{tmp_path / 'no.der'}")
    at("private_key: no.pem", f"source 'plc-2': security private_key: no file "
       f"{tmp_path / 'no.pem'}")
    at("scan-1:", "source 'scan-1': serial port /dev/ttyS0 is also a Modbus RTU bus; one "
       "port, one protocol")
    assert len(found) == 9, found  # w.b (co:1, no type) is a valid bool; w.c is on rtu-b
    # The column points at the offending value.
    column = int(at("w.good:", "opcua source 'plc-1'").split(":")[2])
    assert next(t for t in lines if "w.good:" in t)[column - 1:].startswith(
        '"hr:1"')


def test_the_example_configs_pass_keyop_check() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli", "check", "config/mapping-opcua.yaml",
         "config/mapping.yaml"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert ("config/mapping-opcua.yaml: ok (2 station(s), 11 signal(s))"
            in result.stdout)

