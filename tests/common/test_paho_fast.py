"""common/paho_fast.py, the one module that relies on paho's private members: it is the paho
version it was checked against, those members exist, no other module uses them, and its
overrides agree with paho's own paths. A paho upgrade fails here first."""

from __future__ import annotations

import re
import socket
from importlib import metadata
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt import _packet
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from common.paho_fast import PAHO_CHECKED, PAHO_PRIVATE, FastClient, plain_puback_reason

ROOT = Path(__file__).resolve().parents[2]
ROOMS = ("common", "drivers", "edge_store", "gateway", "hub", "mapping", "simulators", "sync")
PUBACK_CODES = [0, 16, 128, 131, 135, 144, 145, 151, 153]


def test_paho_is_the_version_the_fast_client_was_checked_against() -> None:
    """An upgrade fails here first: re-check every override of common/paho_fast.py against the
    new paho's code, then raise PAHO_CHECKED."""
    assert metadata.version("paho-mqtt") == PAHO_CHECKED


def test_paho_still_has_the_internals_the_fast_client_overrides() -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    for name in PAHO_PRIVATE:
        assert hasattr(client, name), name


def test_no_other_module_touches_pahos_private_members() -> None:
    """Every reliance on paho's private members stays in common/paho_fast.py."""
    pattern = re.compile(r"\.(" + "|".join(re.escape(n) for n in PAHO_PRIVATE) + r")\b")
    offenders = []
    for room in ROOMS:
        for path in sorted((ROOT / room).rglob("*.py")):
            if path == ROOT / "common" / "paho_fast.py":
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, offenders


@pytest.mark.parametrize("code", PUBACK_CODES)
@pytest.mark.parametrize("tail", [b"", b"\x00"])
def test_plain_pubacks_decode_as_paho_decodes_them(code: int, tail: bytes) -> None:
    body = b"\x12\x34" + bytes([code]) + tail
    ours = plain_puback_reason(body)
    paho = _packet.decode_puback(0x40, bytearray(body), MQTTProtocolVersion.MQTTv5).reason
    assert ours is not None
    assert (ours.value, ours.getName(), ours.is_failure) == (
        paho.value, paho.getName(), paho.is_failure)


def test_a_puback_with_only_its_message_id_is_success() -> None:
    reason = plain_puback_reason(b"\x00\x07")
    assert reason is not None and reason == ReasonCode(PacketTypes.PUBACK, identifier=0)
    assert not reason.is_failure


@pytest.mark.parametrize("body", [
    b"\x00",  # too short: paho reports it malformed
    b"\x00\x01\x10\x03\x1f\x00\x00",  # a reason string property
    b"\x00\x01\x05",  # not a PUBACK reason code
])
def test_other_pubacks_are_left_to_paho(body: bytes) -> None:
    assert plain_puback_reason(body) is None


def test_reads_are_served_from_one_buffer_and_cleared_with_the_socket() -> None:
    client = FastClient(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    client._sock = ours
    theirs.sendall(b"\x40\x02\x00\x01" + b"\x40\x02\x00\x02")
    assert client._sock_recv(1) == b"\x40"
    assert client.buffered() == 7
    assert client._sock_recv(1) == b"\x02"
    assert client._sock_recv(10) == b"\x00\x01\x40\x02\x00\x02"  # no more than what is there
    assert client.buffered() == 0
    with pytest.raises(BlockingIOError):
        client._sock_recv(1)
    theirs.sendall(b"\x40\x02")
    assert client._sock_recv(1) == b"\x40"
    client._sock_close()
    assert client.buffered() == 0 and client.socket() is None
    theirs.close()


def test_writes_go_out_together_on_flush_and_before_the_socket_closes() -> None:
    client = FastClient(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(5)
    client._sock = ours
    assert client._sock_send(b"\x40\x02\x00\x01") == 4
    assert client._sock_send(b"\x40\x02\x00\x02") == 4
    assert client.want_write()
    theirs.setblocking(False)
    with pytest.raises(BlockingIOError):
        theirs.recv(64)  # nothing on the wire before the flush
    client.flush()
    assert not client.want_write()
    theirs.settimeout(5)
    assert theirs.recv(64) == b"\x40\x02\x00\x01\x40\x02\x00\x02"
    client._sock_send(b"\xe0\x00")  # DISCONNECT: paho closes the socket right after it
    client._sock_close()
    assert theirs.recv(64) == b"\xe0\x00"
    assert theirs.recv(64) == b""  # closed
    theirs.close()
