"""`keyop bench mapping`: samples through the pure engine, no I/O: throughput and p99 cost.

A line of `stations` presses (the example station, each with its own five signals) runs work
orders, as a polled line delivers it: each poll of a station yields all five of its signals,
and a part (good, or scrap one time in twenty) is made every `polls_per_part` polls, so most
samples repeat the last value, as they do on a real line polled faster than it produces. Work
orders of 500 parts change with their busy edges. Samples are generated in chunks outside the
timed section; a second pass times each sample for the p99.
"""

from __future__ import annotations

import gc
import random
import time
from typing import Any

import numpy as np

from common import yamlsrc
from config import DIR as EXAMPLES
from drivers.base import Quality, Sample
from mapping.engine import Engine
from mapping.load import compile_document

CONFIG = EXAMPLES / "mapping.yaml"
CHUNK = 20_000
TIMED_SAMPLES = 100_000


def bench_mapping_document(stations: int) -> dict[str, Any]:
    """The example mapping with `stations` copies of its press station."""
    doc = yamlsrc.load(CONFIG.read_text(), "bench.yaml")
    base: dict[str, Any] = doc.value
    template_station = base["stations"]["press-1"]
    template_signals = base["signals"]
    signals: dict[str, Any] = {}
    line: dict[str, Any] = {}
    for n in range(stations):
        prefix = f"p{n}"
        for name, spec in template_signals.items():
            signals[name.replace("press", prefix)] = dict(spec)
        station = yamlsrc.load(
            yamlsrc_dump(template_station).replace("press.", f"{prefix}."), "station"
        ).value
        station["equipment"] = {"cell": f"press-{n}"}
        line[f"press-{n}"] = station
    base["signals"] = signals
    base["stations"] = line
    return base


def yamlsrc_dump(value: Any) -> str:
    import yaml

    return str(yaml.safe_dump(value))


class _Line:
    """Generates realistic samples for every station, round robin."""

    def __init__(self, stations: int, seed: int, polls_per_part: int) -> None:
        self.rng = random.Random(seed)
        self.polls_per_part = polls_per_part
        self.stations = stations
        self.good = [self.rng.randrange(2**32) for _ in range(stations)]
        self.scrap = [0] * stations
        self.made = [0] * stations
        self.order = [1000 + n for n in range(stations)]
        self.t = 1_795_154_400.0
        self.mono = 0.0
        self.pending: list[tuple[str, object]] = []
        for n in range(stations):
            p = f"p{n}"
            self.pending += [(f"{p}.good", self.good[n]), (f"{p}.scrap", 0),
                             (f"{p}.order", self.order[n]), (f"{p}.planned", 500),
                             (f"{p}.busy", False), (f"{p}.busy", True)]
        self.cursor = 0

    def chunk(self, size: int) -> list[Sample]:
        out: list[Sample] = []
        rng = self.rng
        while len(out) < size:
            if self.pending:
                polled = self.pending
                self.pending = []
            else:
                n = self.cursor
                self.cursor = (n + 1) % self.stations
                p = f"p{n}"
                busy = True
                if rng.random() < 1 / self.polls_per_part:
                    if self.made[n] >= 500:
                        self.made[n] = 0
                        self.order[n] += self.stations
                        busy = False  # changeover: busy falls, a new order comes, busy rises
                    elif rng.random() < 0.05:
                        self.scrap[n] = (self.scrap[n] + 1) % 2**16
                    else:
                        self.good[n] = (self.good[n] + 1) % 2**32
                        self.made[n] += 1
                polled = [(f"{p}.busy", busy), (f"{p}.good", self.good[n]),
                          (f"{p}.scrap", self.scrap[n]), (f"{p}.order", self.order[n]),
                          (f"{p}.planned", 500)]
            for signal, value in polled:
                self.t += 0.0001
                self.mono += 0.0001
                out.append(Sample(signal, value, Quality.GOOD, self.t, self.mono))  # type: ignore[arg-type]
        return out


def run_bench_mapping(
    stations: int, samples: int, seed: int = 1, polls_per_part: int = 10
) -> dict[str, Any]:
    doc = yamlsrc.Document("bench.yaml", bench_mapping_document(stations))
    engine = Engine(compile_document(doc))
    line = _Line(stations, seed, polls_per_part)
    packets = 0
    elapsed = 0.0
    done = 0
    gc.collect()
    while done < samples:
        batch = line.chunk(min(CHUNK, samples - done))
        step = engine.step
        started = time.perf_counter()
        for sample in batch:
            packets += len(step(sample))
        elapsed += time.perf_counter() - started
        done += len(batch)
    timed = np.empty(min(TIMED_SAMPLES, samples))
    batch = line.chunk(len(timed))
    clock = time.perf_counter_ns
    for i, sample in enumerate(batch):
        t0 = clock()
        engine.step(sample)
        timed[i] = clock() - t0
    return {
        "stations": stations,
        "samples": samples,
        "polls_per_part": polls_per_part,
        "packets": packets,
        "seconds": round(elapsed, 3),
        "samples_per_s": round(samples / elapsed),
        "us_per_sample_mean": round(elapsed / samples * 1e6, 3),
        "us_per_sample_p50": round(float(np.percentile(timed, 50)) / 1000, 3),
        "us_per_sample_p99": round(float(np.percentile(timed, 99)) / 1000, 3),
    }
