"""`keyop bench serial`: frames through a real pty into the serial reader driver.

A child process plays the reader and writes the frames (with injected bad ones) as fast as the
pty takes them; this process runs the driver only, so its CPU time is the driver's cost.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import time
from typing import Any

from drivers.base import Quality
from drivers.framing import FramingSpec, frame_bytes
from drivers.serial_reader import SerialReaderDriver
from drivers.settings import SerialReaderConfig
from simulators.serial_devices import PtyPort

_CTX = multiprocessing.get_context("fork")


def _stream(frames: int, bad_ratio: float, spec: FramingSpec, seed: int) -> tuple[bytes, int]:
    rng = random.Random(seed)
    parts, bad = [], 0
    for n in range(frames):
        if rng.random() < bad_ratio:
            framed = bytearray(frame_bytes(f"(01)09506000134352(21)S{n}", spec))
            framed[-1] ^= 0x55  # a wrong checksum
            parts.append(bytes(framed))
            bad += 1
        else:
            parts.append(frame_bytes(f"(01)09506000134352(21)S{n}", spec))
    return b"".join(parts), bad


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def run_bench_serial(frames: int, bad_ratio: float = 0.05, seed: int = 7) -> dict[str, Any]:
    spec = FramingSpec(kind="stx_etx", checksum="lrc", max_length=64)
    data, injected_bad = _stream(frames, bad_ratio, spec, seed)
    good_expected = frames - injected_bad
    port = PtyPort(spec)
    driver = SerialReaderDriver(SerialReaderConfig("bench", port.path, ("scan",), framing=spec))

    async def main() -> tuple[int, float, float]:
        got = 0
        done = asyncio.Event()

        async def consume() -> None:
            nonlocal got
            async for sample in driver.samples():
                if sample.quality is Quality.GOOD:
                    got += 1
                    if got >= good_expected:
                        done.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(driver.opened.wait(), 10)  # open before the first byte
        assert port.master is not None
        writer = _CTX.Process(target=_write, args=(port.master, data), daemon=True)
        cpu0, t0 = time.process_time(), time.perf_counter()
        writer.start()
        try:
            await asyncio.wait_for(done.wait(), max(60.0, frames / 1000))
        finally:
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            writer.join(10)
            await driver.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return got, elapsed, cpu

    try:
        got, elapsed, cpu = asyncio.run(main())
    finally:
        port.close()
    return {
        "frames": frames,
        "bytes": len(data),
        "seconds": round(elapsed, 3),
        "frames_per_s": round(frames / elapsed),
        "cpu_s_per_1k": round(cpu / frames * 1000, 4),
        "delivered": got,
        "rejected": driver.rejected_total,
        "injected_bad": injected_bad,
    }
