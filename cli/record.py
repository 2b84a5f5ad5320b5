"""`keyop record` and `keyop replay`: capture live samples, run a mapping over them offline."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from drivers.base import Driver, Quality, Sample
from mapping.errors import MappingError, Problem
from mapping.load import load_mapping
from mapping.replay import draft_to_json, replay, sample_from_json, sample_to_json


@dataclass
class Recorded:
    """What `record` wrote, and the sources that never delivered a usable sample."""

    count: int = 0
    delivered: set[str] = field(default_factory=set)  # drivers with a good/uncertain sample
    reasons: dict[str, str] = field(default_factory=dict)  # driver -> its last bad reason

    def silent(self, drivers: list[Driver]) -> list[str]:
        """`name: why` for each driver that delivered nothing usable."""
        return [f"{d.name}: {self.reasons.get(d.name, 'no sample at all')}"
                for d in drivers if d.name not in self.delivered]


async def record(drivers: list[Driver], out: TextIO, duration: float) -> Recorded:
    """Write every sample of `drivers` for `duration` seconds as JSON lines."""
    queue: asyncio.Queue[tuple[str, Sample]] = asyncio.Queue(10_000)

    async def pump(driver: Driver) -> None:
        async for sample in driver.samples():
            await queue.put((driver.name, sample))

    tasks = [asyncio.create_task(pump(driver)) for driver in drivers]
    result = Recorded()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration
    try:
        while (left := deadline - loop.time()) > 0:
            try:
                name, sample = await asyncio.wait_for(queue.get(), left)
            except TimeoutError:
                break
            out.write(sample_to_json(sample) + "\n")
            result.count += 1
            if sample.quality is Quality.BAD:
                result.reasons[name] = sample.reason or "bad sample"
            else:
                result.delivered.add(name)
    finally:
        for driver in drivers:
            await driver.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return result


def read_recording(path: Path) -> Iterator[Sample]:
    """Samples from a JSON-lines recording; a bad line is an error naming file and line."""
    first: float | None = None
    with path.open() as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if first is None:
                    first = float(obj["time"])
                yield sample_from_json(obj, first)
            except (ValueError, KeyError, TypeError) as error:
                raise MappingError(
                    [Problem(str(path), number, 1, f"not a recorded sample: {error}")]
                ) from None


def replay_file(mapping_path: Path, recording: Path, out: TextIO = sys.stdout) -> int:
    """Print the packets the mapping emits for the recording; return how many."""
    _, compiled = load_mapping(mapping_path)
    count = 0
    with contextlib.suppress(BrokenPipeError):
        for count, draft in enumerate(replay(compiled, read_recording(recording)), start=1):
            out.write(draft_to_json(count, draft) + "\n")
    return count
