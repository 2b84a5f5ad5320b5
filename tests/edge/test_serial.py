"""Serial barcode and RFID readers: framings, checksums, GS1 and EPC decoding, dedupe,
unplug/replug and a fuzz run, over real pseudo-terminals."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from drivers.base import Quality, Sample, Scan
from drivers.framing import Frame, Framer, FramingSpec, Rejected, bcc, frame_bytes, lrc
from drivers.gs1 import GS1Error, check_digit, decode_epc, gtin_of_sgtin, parse_element_string
from drivers.serial_reader import Decoder, SerialReaderConfig, SerialReaderDriver, TagPresence
from simulators.serial_devices import PtyPort, RfidReader, Scanner

pytestmark = pytest.mark.timeout(60)

FRAMINGS = [
    FramingSpec(kind="line", terminator="cr"),
    FramingSpec(kind="line", terminator="lf"),
    FramingSpec(kind="line", terminator="crlf"),
    FramingSpec(kind="stx_etx"),
    FramingSpec(kind="stx_etx", checksum="lrc"),
    FramingSpec(kind="stx_etx", checksum="bcc"),
    FramingSpec(kind="fixed", length=10),
    FramingSpec(kind="line", terminator="crlf", prefix="]C1", suffix="#"),
]


def _feed(spec: FramingSpec, data: bytes) -> list[Frame | Rejected]:
    framer = Framer(spec)
    out: list[Frame | Rejected] = []
    for byte in data:  # one byte at a time: frames must survive any split
        out += framer.feed(bytes([byte]), 0.0)
    return out


@pytest.mark.parametrize("spec", FRAMINGS, ids=lambda s: f"{s.kind}-{s.terminator}-{s.checksum}")
def test_each_framing_round_trips_split_anywhere(spec: FramingSpec) -> None:
    payloads = ["WO-1001", "A1B2C3D4E5", "0123456789"]
    data = b"".join(frame_bytes(p, spec) for p in payloads)
    got = [item.payload for item in _feed(spec, data) if isinstance(item, Frame)]
    expected = [p.ljust(spec.length)[: spec.length] if spec.kind == "fixed" else p
                for p in payloads]
    assert got == expected


def test_checksums_match_published_definitions() -> None:
    assert lrc(b"\x31\x32\x03") == (-(0x31 + 0x32 + 0x03)) & 0xFF
    assert bcc(b"\x31\x32\x03") == 0x31 ^ 0x32 ^ 0x03
    spec = FramingSpec(kind="stx_etx", checksum="bcc")
    framed = bytearray(frame_bytes("12", spec))
    assert framed == b"\x0212\x03" + bytes([0x31 ^ 0x32 ^ 0x03])
    framed[-1] ^= 1
    assert [type(i).__name__ for i in _feed(spec, bytes(framed))] == ["Rejected"]


def test_bad_frames_are_rejected_with_reasons() -> None:
    spec = FramingSpec(kind="line", terminator="crlf", max_length=12, timeout_s=0.5)
    framer = Framer(spec)
    out = framer.feed(b"OK-1\r\n" + b"X" * 20 + b"\r\n" + b"BAD\x07\r\nOK-2\r\nPART", 0.0)
    assert [(type(i).__name__, getattr(i, "reason", getattr(i, "payload", ""))) for i in out] == [
        ("Frame", "OK-1"), ("Rejected", "overlong"), ("Rejected", "non_printable"),
        ("Frame", "OK-2")]
    assert framer.expire(0.2) == []
    (late,) = framer.expire(1.0)
    assert isinstance(late, Rejected) and late.reason == "partial_timeout"


def test_gs1_element_strings_against_published_examples() -> None:
    assert check_digit("0950600013435") == 2  # GS1 General Specifications example GTIN
    assert parse_element_string("(01)09506000134352(17)201231(10)AB12(21)X1") == {
        "01": "09506000134352", "17": "201231", "10": "AB12", "21": "X1"}
    raw = "]C10109506000134352" + "10AB12\x1d" + "21X1"
    assert parse_element_string(raw) == {"01": "09506000134352", "10": "AB12", "21": "X1"}
    assert parse_element_string("(00)106141412345678908") == {"00": "106141412345678908"}
    for bad in ["(01)09506000134353", "(99", "(01)0950600013435", "]C1" + "0109506000134352ZZ"]:
        with pytest.raises(GS1Error):
            parse_element_string(bad)


def test_epc_decoding_against_the_tag_data_standard_examples() -> None:
    sgtin = decode_epc("3074257BF7194E4000001A85")
    assert sgtin == "urn:epc:id:sgtin:0614141.812345.6789"
    assert gtin_of_sgtin(sgtin) == "80614141123458"
    assert decode_epc("3114257BF4499602D2000000") == "urn:epc:id:sscc:0614141.1234567890"
    assert decode_epc("E2801160600002054C6F1FAB").startswith("urn:epc:raw:96.x")
    with pytest.raises(GS1Error):
        decode_epc("30742")


def test_decoder_fields_from_gs1_and_site_patterns() -> None:
    decoder = Decoder(SerialReaderConfig("s", "/dev/null", ("x",),
                                         pattern=r"WO-(?P<order>\d+)"))
    assert decoder.decode("(01)09506000134352(10)AB12").field_map == {
        "01": "09506000134352", "10": "AB12"}
    assert decoder.decode("WO-4711").field_map == {"order": "4711"}
    rfid = Decoder(SerialReaderConfig("r", "/dev/null", ("x",), reader="rfid"))
    scan = rfid.decode("3074257BF7194E4000001A85,2,-61.5")
    assert (scan.epc, scan.antenna, scan.rssi) == ("urn:epc:id:sgtin:0614141.812345.6789", 2,
                                                   -61.5)
    with pytest.raises(ValueError):
        rfid.decode("not a tag")


def test_tag_presence_dedupes_reads_and_reports_departure() -> None:
    presence = TagPresence(window_s=2.0, depart_after_s=5.0)
    tag = Scan("rfid", "3074257BF7194E4000001A85")
    events = [presence.read(tag, t) for t in (0.0, 0.1, 0.5, 1.9, 3.0)]
    assert [e.event if e else None for e in events] == ["arrival", None, None, None, None]
    assert presence.departures(7.0) == []  # last seen at 3.0
    (gone,) = presence.departures(8.5)
    assert gone.event == "departure" and gone.code == tag.code
    assert presence.read(tag, 9.0) is not None  # back again: a new arrival


class _Running:
    """A driver consuming in the background, its samples collected."""

    def __init__(self, driver: SerialReaderDriver) -> None:
        self.driver = driver
        self.samples: list[Sample] = []
        self.task = asyncio.create_task(self._consume())

    async def _consume(self) -> None:
        async for sample in self.driver.samples():
            self.samples.append(sample)

    async def until(self, predicate: Callable[[list[Sample]], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.samples):
            assert time.monotonic() < deadline, f"timed out; got {self.samples[-5:]}"
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        await self.driver.close()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def _good(samples: list[Sample]) -> list[str]:
    return [str(s.value) for s in samples if s.quality is Quality.GOOD]


async def _opened(port: PtyPort, running: _Running) -> None:
    # Bytes written before the driver opened the port would go through a cooked line
    # discipline; wait until it holds the port.
    await asyncio.wait_for(running.driver.opened.wait(), 5)


def test_unplug_and_replug_under_a_by_id_name(tmp_path: Path) -> None:
    async def main() -> list[Sample]:
        spec = FramingSpec(kind="line", terminator="cr")
        scanner = Scanner(spec, tmp_path / "usb-Acme_Scanner_1234-if00")
        running = _Running(SerialReaderDriver(SerialReaderConfig(
            "scanner-1", scanner.path, ("scan.code",), framing=spec, backoff_initial_s=0.05,
            backoff_max_s=0.2)))
        try:
            await _opened(scanner, running)
            scanner.scan("WO-1")
            await running.until(lambda s: _good(s) == ["WO-1"])
            scanner.unplug()
            await running.until(lambda s: any(x.quality is Quality.BAD for x in s))
            assert not running.driver.opened.is_set()
            scanner.plug()
            await _opened(scanner, running)
            scanner.scan("WO-2")
            await running.until(lambda s: _good(s) == ["WO-1", "WO-2"])
            assert running.driver.reconnects == 1
            return running.samples
        finally:
            await running.stop()
            scanner.close()

    samples = asyncio.run(main())
    bad = [s for s in samples if s.quality is Quality.BAD]
    assert len(bad) == 1 and bad[0].reason and bad[0].reason.startswith("comm_lost")


def test_rfid_burst_is_one_arrival_then_a_departure(tmp_path: Path) -> None:
    async def main() -> list[Sample]:
        spec = FramingSpec(kind="stx_etx", checksum="bcc")
        reader = RfidReader(spec)
        running = _Running(SerialReaderDriver(SerialReaderConfig(
            "rfid-1", reader.path, ("dock.tag",), reader="rfid", framing=spec,
            dedupe_window_s=1.0, depart_after_s=0.4)))
        try:
            await _opened(reader, running)
            reader.read_tag("3074257BF7194E4000001A85", times=50)
            await running.until(lambda s: any(
                isinstance(x.value, Scan) and x.value.event == "departure" for x in s))
            return running.samples
        finally:
            await running.stop()
            reader.close()

    samples = asyncio.run(main())
    events = [(s.value.event, s.value.epc) for s in samples if isinstance(s.value, Scan)]
    assert events == [("arrival", "urn:epc:id:sgtin:0614141.812345.6789"),
                      ("departure", "urn:epc:id:sgtin:0614141.812345.6789")]


def _mutations(rng: random.Random, spec: FramingSpec, payload: str) -> bytes:
    """One bad frame, of a kind the framing must reject exactly once."""
    kind = rng.randrange(4)
    if kind == 0:  # one payload byte changed: the checksum catches it
        framed = bytearray(frame_bytes(payload, spec))
        at = rng.randrange(1, len(payload) + 1)
        framed[at] = (framed[at] + rng.randrange(1, 60)) % 94 + 33
        if framed[at] in (0x02, 0x03) or bytes(framed) == frame_bytes(payload, spec):
            framed[at] = ord("#") if framed[at] != ord("#") else ord("%")
        return bytes(framed)
    if kind == 1:  # wrong checksum
        framed = bytearray(frame_bytes(payload, spec))
        framed[-1] ^= rng.randrange(1, 256)
        return bytes(framed)
    if kind == 2:  # overlong
        return frame_bytes("X" * (spec.max_length + rng.randrange(1, 50)), spec)
    body = bytes(rng.choice([0x07, 0x1B, 0x7F, 0x00]) for _ in range(3))  # non-printable
    return b"\x02" + body + b"\x03" + bytes([lrc(body + b"\x03")])


def test_fuzz_ten_thousand_frames_no_crash_bad_counted_good_delivered_once() -> None:
    rng = random.Random(20261121)
    spec = FramingSpec(kind="stx_etx", checksum="lrc", max_length=40)
    good: list[str] = []
    stream = bytearray()
    bad = 0
    for n in range(10_000):
        if rng.random() < 0.3:
            stream += _mutations(rng, spec, f"WO-{rng.randrange(10**6)}")
            bad += 1
        else:
            payload = f"WO-{n}-{rng.randrange(10**4)}"
            good.append(payload)
            stream += frame_bytes(payload, spec)

    async def main() -> tuple[list[Sample], SerialReaderDriver]:
        port = PtyPort(spec)
        driver = SerialReaderDriver(SerialReaderConfig("fuzz", port.path, ("scan",),
                                                       framing=spec))
        running = _Running(driver)
        try:
            await _opened(port, running)
            # As a reader sends, in bursts; from a thread, since a full pty blocks the writer.
            await asyncio.to_thread(port.write, bytes(stream))
            await running.until(lambda s: len(s) >= len(good), timeout=30)
            await asyncio.sleep(0.2)  # nothing more may come
            return running.samples, driver
        finally:
            await running.stop()
            port.close()

    samples, driver = asyncio.run(main())
    assert _good(samples) == good, "every good frame exactly once, in order"
    assert driver.rejected_total == bad, dict(driver.rejected)

    # Pure random bytes: the framer never crashes and never invents a frame.
    framer = Framer(spec)
    for _ in range(200):
        for item in framer.feed(rng.randbytes(rng.randrange(1, 200)), 0.0):
            assert isinstance(item, Rejected | Frame)


def test_a_scan_on_a_real_pty_sets_the_station_context(tmp_path: Path) -> None:
    """Mapping + driver together: a scanner on a pty, the assembly mapping's station."""
    from common import yamlsrc
    from gateway.devices import build_drivers
    from mapping.engine import Engine
    from mapping.load import compile_document

    spec = FramingSpec(kind="line", terminator="cr")
    scanner = Scanner(spec)
    text = (Path(__file__).parent / "mapping_cases" / "assembly" / "mapping.yaml").read_text()
    text = text.replace("/dev/serial/by-id/usb-Datalogic_QD2430-if00", scanner.path)
    doc = yamlsrc.load(text, str(tmp_path / "mapping.yaml"))
    compiled = compile_document(doc)
    driver = next(d for d in build_drivers(doc, compiled) if d.name == "scanner-9")
    assert isinstance(driver, SerialReaderDriver)
    engine = Engine(compiled)

    async def main() -> list[str]:
        running = _Running(driver)
        try:
            await _opened(scanner, running)
            scanner.scan("garbage")
            scanner.scan("*WO-31337")
            await running.until(lambda s: len(s) >= 2)
        finally:
            await running.stop()
            scanner.close()
        drafts = [d for s in running.samples for d in engine.step(s)]
        return [f"{d.type} {d.data.get('workOrder', {}).get('id')} {d.data['scan']['code']}"
                for d in drafts]

    assert asyncio.run(main()) == ["keyop.station.context WO-31337 *WO-31337"]


def test_scanner_driven_by_the_scenario_gives_each_order_context_once(tmp_path: Path) -> None:
    from common import yamlsrc
    from gateway.devices import build_drivers
    from mapping.engine import Engine
    from mapping.load import compile_document
    from simulators import scenario as sc
    from simulators.serial_devices import scan_plan

    spec = FramingSpec(kind="line", terminator="crlf")
    scanner = Scanner(spec, tmp_path / "usb-scanner")
    text = (Path(__file__).parent / "mapping_cases" / "assembly" / "mapping.yaml").read_text()
    text = text.replace("/dev/serial/by-id/usb-Datalogic_QD2430-if00", scanner.path)
    text = text.replace("framing: {kind: line, terminator: cr}", "framing: {kind: line}")
    doc = yamlsrc.load(text, str(tmp_path / "mapping.yaml"))
    compiled = compile_document(doc)
    driver = next(d for d in build_drivers(doc, compiled) if d.name == "scanner-9")
    assert isinstance(driver, SerialReaderDriver)

    async def main() -> tuple[list[str], list[Sample]]:
        running = _Running(driver)
        try:
            await _opened(scanner, running)
            expected = await scan_plan(scanner, sc.Scenario(orders=(
                sc.WorkOrder(1001, 5), sc.WorkOrder(1002, 5), sc.WorkOrder(1003, 5),
                sc.WorkOrder(1004, 5))))
            await running.until(lambda s: len(_good(s)) >= len(expected))
            return expected, running.samples
        finally:
            await running.stop()
            scanner.close()

    expected, samples = asyncio.run(main())
    engine = Engine(compiled)
    contexts = [d.data["workOrder"]["id"] for s in samples for d in engine.step(s)
                if d.type == "keyop.station.context"]
    assert contexts == expected
    assert driver.rejected_total == 1  # the one dirty label


def test_a_slow_mapping_holds_reads_back_and_loses_nothing() -> None:
    """When the consumer falls behind, the driver stops reading (the OS buffer holds the
    bytes) instead of dropping chunks, and the wait is no partial-frame timeout."""
    spec = FramingSpec(kind="line", timeout_s=0.2)
    codes = [f"C{n}" for n in range(20_000)]

    async def main() -> tuple[list[str], SerialReaderDriver]:
        port = PtyPort(spec)
        driver = SerialReaderDriver(SerialReaderConfig("slow", port.path, ("x",), framing=spec))
        got: list[str] = []
        all_in = asyncio.Event()

        async def consume() -> None:
            async for sample in driver.samples():
                got.append(str(sample.value))
                if len(got) == len(codes):
                    all_in.set()
                if len(got) % 400 == 0:
                    await asyncio.sleep(0.1)  # a mapping far slower than the line

        task = asyncio.create_task(consume())
        try:
            await asyncio.wait_for(driver.opened.wait(), 5)
            await asyncio.to_thread(port.write, b"".join(frame_bytes(c, spec) for c in codes))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_in.wait(), 30)
            return got, driver
        finally:
            await driver.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            port.close()

    got, driver = asyncio.run(main())
    assert got == codes
    assert driver.rejected_total == 0, dict(driver.rejected)
