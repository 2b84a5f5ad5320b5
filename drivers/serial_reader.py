"""Barcode scanners and RFID readers on serial lines (pyserial), as one driver.

Bytes are read without blocking the loop (the port's file descriptor is watched with
`loop.add_reader`), cut into frames (`drivers.framing`), and decoded: barcodes into plain codes,
GS1 element strings or a site pattern's named groups; RFID reads into EPC URNs with antenna and
RSSI, repeated reads within the dedupe window reported once as an arrival and a tag not seen for
`depart_after_s` as a departure. A frame that does not parse is counted by reason, logged, and
never reaches the mapping. A port that vanishes (USB pulled) gives one `bad` sample per signal
and a reconnect loop with backoff; reads resume when the port returns, by-id names included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import serial

from drivers.base import Quality, Sample, Scan
from drivers.framing import Frame, Framer, Rejected
from drivers.gs1 import (
    GS1Error,
    decode_epc,
    identifiers_of,
    looks_like_element_string,
    parse_element_string,
)
from drivers.settings import SerialReaderConfig

log = logging.getLogger(__name__)

_PARITY = {"none": serial.PARITY_NONE, "even": serial.PARITY_EVEN, "odd": serial.PARITY_ODD,
           "mark": serial.PARITY_MARK, "space": serial.PARITY_SPACE}
_EPC_READ = re.compile(
    r"^\s*(?:EPC[:=]?\s*)?(?P<epc>[0-9A-Fa-f]{24,})"
    r"(?:[,;\s]+(?:ANT[:=]?\s*)?(?P<antenna>\d+))?"
    r"(?:[,;\s]+(?:RSSI[:=]?\s*)?(?P<rssi>-?\d+(?:\.\d+)?))?\s*$"
)


class Decoder:
    """Frame payloads → `Scan`s (pure: tests and the benchmark use it without a port)."""

    def __init__(self, config: SerialReaderConfig) -> None:
        self.config = config
        self.pattern = re.compile(config.pattern) if config.pattern else None

    def decode(self, payload: str) -> Scan:
        """Raise ValueError (with the reason) for a payload that is not a valid read."""
        if self.config.reader == "rfid":
            match = _EPC_READ.match(payload)
            if match is None:
                raise ValueError("not an EPC read")
            epc_hex = match.group("epc").upper()
            try:
                urn = decode_epc(epc_hex)
            except GS1Error as error:
                raise ValueError(str(error)) from None
            antenna = match.group("antenna")
            rssi = match.group("rssi")
            return Scan("rfid", epc_hex, tuple(sorted(identifiers_of(urn).items())), epc=urn,
                        antenna=int(antenna) if antenna else None,
                        rssi=float(rssi) if rssi else None)
        fields: dict[str, str] = {}
        if looks_like_element_string(payload):
            try:
                fields = parse_element_string(payload)
            except GS1Error as error:
                raise ValueError(f"GS1: {error}") from None
        if self.pattern is not None:
            match = self.pattern.search(payload)
            if match is not None:
                fields.update({k: v for k, v in match.groupdict().items() if v is not None})
        return Scan("barcode", payload, tuple(sorted(fields.items())))


class TagPresence:
    """RFID dedupe: many reads of a tag within the window are one arrival; silence past
    `depart_after_s` is its departure."""

    def __init__(self, window_s: float, depart_after_s: float) -> None:
        self.window_s = window_s
        self.depart_after_s = depart_after_s
        self.last_seen: dict[str, float] = {}
        self.present: dict[str, Scan] = {}

    def read(self, scan: Scan, now: float) -> Scan | None:
        """An arrival for a tag not present (or unseen for longer than the window)."""
        last = self.last_seen.get(scan.code)
        self.last_seen[scan.code] = now
        if scan.code in self.present and last is not None and now - last <= self.window_s:
            return None
        if scan.code in self.present:
            return None  # still present: its reads keep it alive
        arrival = Scan(scan.kind, scan.code, scan.fields, scan.epc, "arrival", scan.antenna,
                       scan.rssi)
        self.present[scan.code] = arrival
        return arrival

    def departures(self, now: float) -> list[Scan]:
        gone = [code for code in self.present
                if now - self.last_seen.get(code, now) > self.depart_after_s]
        out = []
        for code in gone:
            scan = self.present.pop(code)
            self.last_seen.pop(code, None)
            out.append(Scan(scan.kind, scan.code, scan.fields, scan.epc, "departure",
                            scan.antenna, scan.rssi))
        return out


class _Chunks:
    """A port's bytes as they arrive, read on the loop without blocking it (the port's file
    descriptor is watched with `loop.add_reader`).

    Chunks carry their arrival time: the partial-frame timeout must measure the line's
    silence, not how long the mapping took to get to them. While the queue is full (the
    mapping is behind) reading stops and the OS buffer (and the line's flow control) holds
    the bytes, rather than drop any; it resumes once the queue is half empty.
    """

    def __init__(self, port: serial.Serial, loop: asyncio.AbstractEventLoop) -> None:
        self.port = port
        self.loop = loop
        self.fd = port.fileno()
        self.queue: asyncio.Queue[tuple[bytes, float] | None] = asyncio.Queue(1000)
        self.paused = False

    def start(self) -> None:
        self.loop.add_reader(self.fd, self._readable)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.fd)

    @property
    def idle(self) -> bool:
        """Nothing more is waiting, and the port is being read."""
        return self.queue.empty() and not self.paused

    async def next(self, tick: float) -> tuple[bytes, float] | None:
        """The next chunk; an empty one after `tick` seconds of silence; None once the port
        is gone."""
        try:
            chunk = await asyncio.wait_for(self.queue.get(), tick)
        except TimeoutError:
            chunk = (b"", self.loop.time())
        if chunk is not None and self.paused and self.queue.qsize() < self.queue.maxsize // 2:
            self.paused = False
            self.loop.add_reader(self.fd, self._readable)
        return chunk

    def _readable(self) -> None:
        if self.queue.full():
            self.loop.remove_reader(self.fd)
            self.paused = True
            return
        try:
            data = self.port.read(4096)
        except (serial.SerialException, OSError):
            data = None
        if data is None or (not data and not self.port.is_open):
            self.loop.remove_reader(self.fd)
            self.queue.put_nowait(None)
            return
        if data:
            self.queue.put_nowait((data, self.loop.time()))


class SerialReaderDriver:
    """A `Driver` for one serial barcode scanner or RFID reader."""

    def __init__(self, config: SerialReaderConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        self.name = config.name
        self.decoder = Decoder(config)
        self.frames = 0
        self.rejected: Counter[str] = Counter()
        self.reconnects = 0
        self._rng = rng or random.Random()
        self._closed = asyncio.Event()
        self._serial: serial.Serial | None = None
        self.opened = asyncio.Event()  # set while the port is open (tests, benchmarks)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def _open(self) -> serial.Serial:
        c = self.config
        return serial.Serial(
            c.port, baudrate=c.baud, bytesize=c.bytesize, parity=_PARITY[c.parity],
            stopbits=c.stopbits, rtscts=c.flow == "rtscts", xonxoff=c.flow == "xonxoff",
            timeout=0, exclusive=True,
        )

    def _bad(self, reason: str) -> list[Sample]:
        now = time.time()
        loop_now = asyncio.get_running_loop().time()
        return [Sample(name, None, Quality.BAD, now, loop_now, reason)
                for name in self.config.signals]

    def _good(self, scan: Scan) -> list[Sample]:
        now = time.time()
        loop_now = asyncio.get_running_loop().time()
        return [Sample(name, scan, Quality.GOOD, now, loop_now) for name in self.config.signals]

    def _reject(self, rejected: Rejected, detail: str = "") -> None:
        self.rejected[rejected.reason] += 1
        log.warning("serial frame rejected", extra={
            "device": self.name, "port": self.config.port, "reason": rejected.reason,
            "detail": detail, "data": rejected.data[:32].hex()})

    async def samples(self) -> AsyncIterator[Sample]:
        loop = asyncio.get_running_loop()
        backoff = self.config.backoff_initial_s
        lost_reported = False
        while not self._closed.is_set():
            try:
                port = self._open()
            except (serial.SerialException, OSError) as error:
                if not lost_reported:
                    lost_reported = True
                    log.error("serial port unavailable; retrying", extra={
                        "device": self.name, "port": self.config.port, "error": str(error)})
                    for sample in self._bad(f"comm_lost: {self.config.port}: {error}"):
                        yield sample
                await self._wait(backoff * (0.5 + self._rng.random()))
                backoff = min(backoff * 2, self.config.backoff_max_s)
                continue
            if lost_reported:
                self.reconnects += 1
                log.info("serial port back", extra={"device": self.name,
                                                    "port": self.config.port})
            lost_reported = False
            backoff = self.config.backoff_initial_s
            self._serial = port
            self.opened.set()
            try:
                async for sample in self._read(port, loop):
                    yield sample
            finally:
                self._serial = None
                self.opened.clear()
                with contextlib.suppress(Exception):  # closing a vanished port may fail too
                    port.close()
            if not self._closed.is_set():
                lost_reported = True
                log.error("serial port lost; reconnecting", extra={
                    "device": self.name, "port": self.config.port})
                for sample in self._bad(f"comm_lost: {self.config.port} went away"):
                    yield sample

    async def _read(self, port: serial.Serial, loop: asyncio.AbstractEventLoop
                    ) -> AsyncIterator[Sample]:
        chunks = _Chunks(port, loop)
        framer = Framer(self.config.framing)
        presence = TagPresence(self.config.dedupe_window_s, self.config.depart_after_s)
        tick = min(0.1, self.config.framing.timeout_s / 2)
        chunks.start()
        try:
            while not self._closed.is_set():
                chunk = await chunks.next(tick)
                if chunk is None:
                    return
                data, arrived = chunk
                items = framer.feed(data, arrived)
                if chunks.idle:  # nothing more waiting: is the line silent?
                    items += framer.expire(loop.time())
                for sample in self._samples(items, presence, loop.time()):
                    yield sample
        finally:
            chunks.stop()

    def _samples(self, items: list[Frame | Rejected], presence: TagPresence,
                 now: float) -> Iterator[Sample]:
        """The samples of a chunk's frames, then of the tags that departed by `now`."""
        for item in items:
            scan = self._scan(item, presence, now)
            if scan is not None:
                yield from self._good(scan)
        for departed in presence.departures(now):
            yield from self._good(departed)

    def _scan(self, item: Frame | Rejected, presence: TagPresence, now: float) -> Scan | None:
        """The scan a frame reports: None for a rejected frame or a tag already present."""
        if isinstance(item, Rejected):
            self._reject(item)
            return None
        scan = self._decode(item)
        if scan is None:
            return None
        self.frames += 1
        if self.config.reader == "rfid":
            return presence.read(scan, now)
        return scan

    def _decode(self, frame: Frame) -> Scan | None:
        try:
            return self.decoder.decode(frame.payload)
        except ValueError as error:
            self._reject(Rejected("decode", frame.payload.encode()[:64]), str(error))
            return None

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), seconds)

    async def close(self) -> None:
        self._closed.set()
        port = self._serial
        if port is not None:
            with contextlib.suppress(Exception):
                port.close()
