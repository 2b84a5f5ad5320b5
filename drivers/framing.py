"""Byte streams from serial readers cut into frames: line-terminated, STX/ETX (with an
optional LRC or BCC checksum) or fixed length; prefix/suffix strip; a maximum length.

Pure and incremental: `feed(data, now)` returns the frames and rejections the new bytes
complete; `expire(now)` rejects a partial frame that waited longer than the timeout. A frame
that does not parse never reaches the mapping: it becomes a `Rejected` with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

STX, ETX = 0x02, 0x03
TERMINATORS = {"cr": b"\r", "lf": b"\n", "crlf": b"\r\n"}

Checksum = Literal["none", "lrc", "bcc"]


@dataclass(frozen=True, slots=True)
class Frame:
    payload: str


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str  # overlong, bad_checksum, non_printable, partial_timeout, no_stx, partial, decode
    data: bytes


@dataclass(frozen=True, slots=True)
class FramingSpec:
    kind: Literal["line", "stx_etx", "fixed"] = "line"
    terminator: Literal["cr", "lf", "crlf"] = "crlf"
    checksum: Checksum = "none"
    length: int = 0  # fixed-length frames
    max_length: int = 512
    prefix: str = ""
    suffix: str = ""
    timeout_s: float = 0.5  # a partial frame silent this long is rejected


def lrc(data: bytes) -> int:
    """Longitudinal redundancy check: two's complement of the byte sum."""
    return (-sum(data)) & 0xFF


def bcc(data: bytes) -> int:
    """Block check character: XOR of the bytes."""
    value = 0
    for byte in data:
        value ^= byte
    return value


def _printable(data: bytes) -> bool:
    # GS (0x1d) separates GS1 fields in raw scans; everything else must be printable ASCII.
    return all(32 <= b < 127 or b == 0x1D for b in data)


class Framer:
    """Incremental framer for one link."""

    def __init__(self, spec: FramingSpec) -> None:
        self.spec = spec
        self._buffer = bytearray()
        self._since: float | None = None  # when the pending partial frame began
        self._discarding = False  # after an overlong frame: skip to the next boundary
        self._terminator = TERMINATORS[spec.terminator]

    def feed(self, data: bytes, now: float) -> list[Frame | Rejected]:
        out: list[Frame | Rejected] = []
        if data:
            self._since = now  # the partial-frame timeout counts from the last byte received
        self._buffer += data
        if self.spec.kind == "line":
            self._lines(out)
        elif self.spec.kind == "stx_etx":
            self._stx_etx(out)
        else:
            self._fixed(out)
        if not self._buffer:
            self._since = None
        elif self._since is None:
            self._since = now
        return out

    def expire(self, now: float) -> list[Frame | Rejected]:
        """A partial frame with no new byte for longer than the timeout is rejected."""
        if self._buffer and self._since is not None and now - self._since > self.spec.timeout_s:
            data = bytes(self._buffer)
            self._buffer.clear()
            self._since = None
            self._discarding = False
            return [Rejected("partial_timeout", data)]
        return []

    def _accept(self, raw: bytes, out: list[Frame | Rejected]) -> None:
        spec = self.spec
        if len(raw) > spec.max_length:
            out.append(Rejected("overlong", raw[:64]))
            return
        if not _printable(raw):
            out.append(Rejected("non_printable", raw[:64]))
            return
        text = raw.decode("ascii")
        if spec.prefix and text.startswith(spec.prefix):
            text = text[len(spec.prefix):]
        if spec.suffix and text.endswith(spec.suffix):
            text = text[: -len(spec.suffix)]
        if not text:
            return  # an empty line between frames is no frame and no error
        out.append(Frame(text))

    def _lines(self, out: list[Frame | Rejected]) -> None:
        buffer, terminator = self._buffer, self._terminator
        while True:
            end = buffer.find(terminator)
            if end < 0:
                if len(buffer) > self.spec.max_length:
                    out.append(Rejected("overlong", bytes(buffer[:64])))
                    buffer.clear()
                    self._discarding = True
                return
            raw = bytes(buffer[:end])
            del buffer[: end + len(terminator)]
            if self._discarding:
                self._discarding = False  # the tail of an overlong line
                continue
            # With CRLF framing a bare CR or LF inside is garbage, not a terminator.
            self._accept(raw, out)

    def _stx_etx(self, out: list[Frame | Rejected]) -> None:
        buffer = self._buffer
        with_checksum = self.spec.checksum != "none"
        if self._discarding:
            # The rest of a frame already rejected as overlong: drop it up to the next STX.
            start = buffer.find(STX)
            if start < 0:
                buffer.clear()
                return
            del buffer[:start]
            self._discarding = False
        while buffer:
            start = buffer.find(STX)
            if start < 0:
                out.append(Rejected("no_stx", bytes(buffer[:64])))
                buffer.clear()
                return
            if start > 0:
                out.append(Rejected("no_stx", bytes(buffer[:start][:64])))
                del buffer[:start]
            end = buffer.find(ETX, 1)
            next_stx = buffer.find(STX, 1)
            if 0 < next_stx < (end if end >= 0 else len(buffer)):
                out.append(Rejected("partial", bytes(buffer[:next_stx][:64])))
                del buffer[:next_stx]
                continue
            if end < 0:
                if len(buffer) > self.spec.max_length + 3:
                    out.append(Rejected("overlong", bytes(buffer[:64])))
                    buffer.clear()
                    self._discarding = True
                return
            if with_checksum and len(buffer) < end + 2:
                return  # the checksum byte has not arrived yet
            body = bytes(buffer[1:end])
            if with_checksum:
                got = buffer[end + 1]
                covered = body + bytes([ETX])
                want = lrc(covered) if self.spec.checksum == "lrc" else bcc(covered)
                del buffer[: end + 2]
                if got != want:
                    out.append(Rejected("bad_checksum", body[:64]))
                    continue
            else:
                del buffer[: end + 1]
            self._accept(body, out)

    def _fixed(self, out: list[Frame | Rejected]) -> None:
        size = self.spec.length
        while len(self._buffer) >= size:
            raw = bytes(self._buffer[:size])
            del self._buffer[:size]
            self._accept(raw, out)


def frame_bytes(payload: str, spec: FramingSpec) -> bytes:
    """Encode a payload the way a reader with `spec` sends it (simulators, tests)."""
    body = (spec.prefix + payload + spec.suffix).encode("ascii")
    if spec.kind == "line":
        return body + TERMINATORS[spec.terminator]
    if spec.kind == "fixed":
        return body.ljust(spec.length)[: spec.length]
    framed = bytes([STX]) + body + bytes([ETX])
    if spec.checksum == "lrc":
        framed += bytes([lrc(body + bytes([ETX]))])
    elif spec.checksum == "bcc":
        framed += bytes([bcc(body + bytes([ETX]))])
    return framed
