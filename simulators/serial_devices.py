"""A barcode scanner and an RFID reader on pseudo-terminals: real serial I/O, no hardware.

The driver opens the pty's slave side exactly as it would open `/dev/ttyUSB0`; an optional
symlink plays the `/dev/serial/by-id/...` name. Fault switches: garbage bytes, partial frames,
bad checksums, bursts of repeated tag reads, and a port that vanishes (`unplug`) and returns
under the same name (`replug`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
import tty
from collections.abc import Sequence
from pathlib import Path

from drivers.framing import FramingSpec, frame_bytes
from simulators.scenario import Scenario, iter_orders


class PtyPort:
    """One end a device writes to, one path a driver opens."""

    def __init__(self, framing: FramingSpec, link: Path | None = None) -> None:
        self.framing = framing
        self.link = link
        self.master: int | None = None
        self.slave: int | None = None
        self.plug()

    @property
    def path(self) -> str:
        """What a driver opens: the by-id style link when there is one."""
        if self.link is not None:
            return str(self.link)
        assert self.slave is not None
        return os.ttyname(self.slave)

    def plug(self) -> None:
        self.master, self.slave = os.openpty()
        # Raw on both sides: no echo, no CR/LF translation before the driver configures it.
        tty.setraw(self.slave)
        tty.setraw(self.master)
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
            self.link.symlink_to(os.ttyname(self.slave))

    def unplug(self) -> None:
        """The USB cable is pulled: the device node and its by-id name disappear."""
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
        for fd in (self.master, self.slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.master = self.slave = None

    def replug(self) -> None:
        self.unplug()
        self.plug()

    def write(self, data: bytes) -> None:
        assert self.master is not None, "unplugged"
        view = memoryview(data)
        while view:
            written = os.write(self.master, view)
            view = view[written:]

    def send(self, payload: str) -> None:
        self.write(frame_bytes(payload, self.framing))

    def send_bad_checksum(self, payload: str) -> None:
        framed = bytearray(frame_bytes(payload, self.framing))
        framed[-1] ^= 0x5A  # the checksum byte
        self.write(bytes(framed))

    def send_garbage(self, data: bytes) -> None:
        self.write(data)

    def close(self) -> None:
        self.unplug()


class Scanner(PtyPort):
    def scan(self, code: str) -> None:
        self.send(code)


class RfidReader(PtyPort):
    def read_tag(self, epc_hex: str, antenna: int = 1, rssi: float = -55.0, times: int = 1,
                 gap_s: float = 0.0) -> None:
        """A tag in the field is read again and again: `times` reads `gap_s` apart."""
        for n in range(times):
            self.send(f"{epc_hex},{antenna},{rssi:.1f}")
            if gap_s and n + 1 < times:
                time.sleep(gap_s)


async def scan_plan(scanner: Scanner, scenario: Scenario, every_s: float = 0.05,
                    garbage_every: int = 3) -> list[str]:
    """Scan each work order of the scenario's plan (with a garbage read now and then, as a
    dirty label gives); return the codes a station must take as its order context, in order.
    """
    expected = []
    for n, order in enumerate(iter_orders(scenario)):
        if garbage_every and n % garbage_every == 1:
            scanner.send_garbage(b"\x15\x00\xff?\r\n")
        code = f"*{order.work_order}"
        scanner.scan(code)
        expected.append(order.work_order)
        await asyncio.sleep(every_s)
    return expected


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m simulators.serial_devices`: a scanner on a pty that scans work orders."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--link", type=Path, default=None, help="symlink to create (by-id)")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between scans")
    parser.add_argument("--count", type=int, default=0, help="scans, 0 = forever")
    args = parser.parse_args(argv)
    scanner = Scanner(FramingSpec(kind="line", terminator="crlf"), args.link)
    print(f'{{"port": "{scanner.path}"}}', flush=True)
    n = 0
    try:
        while args.count == 0 or n < args.count:
            time.sleep(args.every)
            scanner.scan(f"WO-{2000 + n}")
            n += 1
    except KeyboardInterrupt:
        pass
    finally:
        scanner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
