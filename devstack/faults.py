"""The fault rig: real processes, faults on demand, counted end to end. The fault tests and
`keyop bench faults` (bench/delivery.py) run on it.

A `FaultRig` is a `Stack` (private Mosquitto, Modbus press simulator, `keyop hub` and
`keyop run` as processes) with a fast production plan (a part every few ms, a progress packet
per part) and the counting of the delivery promise: what the edge committed (the outbox's last
sequence per epoch) against what the hub stored (rows, distinct sequences, contiguity), per
`(source, epoch)`. Pass means 0 lost, 0 duplicates in the hub store, each epoch's sequences
complete from 1 (or from the first after a declared gap record).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.stack import SOURCE, Stack
from simulators import scenario as sc

GAP_TYPE = "keyop.outbox.gap"


@dataclass
class Counts:
    """Edge against hub, per epoch of the source."""

    committed: int = 0
    """Sequences allocated at the edge, all epochs (packets committed, gap records included)."""
    stored: int = 0
    """Rows in the hub store for the source."""
    distinct: int = 0
    duplicates_in_store: int = 0
    lost: int = 0
    """Committed sequences neither in the hub store nor named by a gap record."""
    evicted: int = 0
    """Sequences named by gap records the hub stored."""
    complete: bool = False
    epochs: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"committed": self.committed, "stored_at_hub": self.stored,
                "lost": self.lost, "duplicates_in_store": self.duplicates_in_store,
                "evicted_named_by_gaps": self.evicted, "seq_complete": self.complete,
                "epochs": len(self.epochs)}


def edge_epochs(outbox_path: Path) -> dict[str, int]:
    """{epoch: last_seq} of the outbox file and of any file moved aside next to it."""
    result: dict[str, int] = {}
    for path in [outbox_path, *outbox_path.parent.glob(outbox_path.name + ".corrupt-*")]:
        if not path.exists() or path.name.endswith(("-wal", "-shm")):
            continue
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                                    timeout=10)) as conn:
                epoch, last = conn.execute("SELECT epoch, last_seq FROM outbox_meta").fetchone()
                top = conn.execute("SELECT max(seq) FROM outbox").fetchone()[0] or 0
        except sqlite3.DatabaseError:
            continue
        result[str(epoch)] = max(int(last), int(top))
    return result


def hub_rows(hub_db: Path, source: str = SOURCE) -> list[tuple[str, int, str, str]]:
    """(epoch, seq, type, body) of every stored packet of `source`."""
    if not hub_db.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{hub_db}?mode=ro", uri=True,
                                            timeout=10)) as conn:
        return [(str(e), int(s), str(t), str(b)) for e, s, t, b in conn.execute(
            "SELECT epoch, seq, type, body FROM packets WHERE source = ?", (source,))]


def count(outbox_path: Path, hub_db: Path, source: str = SOURCE) -> Counts:
    """Compare the edge's committed sequences with the hub store (read-only on both)."""
    epochs = edge_epochs(outbox_path)
    rows = hub_rows(hub_db, source)
    result = Counts(committed=sum(epochs.values()), stored=len(rows))
    seen: dict[str, set[int]] = {}
    named: dict[str, set[int]] = {}
    for epoch, seq, kind, body in rows:
        seen.setdefault(epoch, set()).add(seq)
        if kind == GAP_TYPE:
            gap = json.loads(body)["data"]["gap"]
            named.setdefault(epoch, set()).update(
                range(int(gap["fromSequence"]), int(gap["toSequence"]) + 1))
    result.distinct = sum(len(s) for s in seen.values())
    result.duplicates_in_store = result.stored - result.distinct
    complete = True
    for epoch, last in epochs.items():
        have = seen.get(epoch, set())
        gaps = named.get(epoch, set()) - have
        missing = set(range(1, last + 1)) - have - gaps
        result.lost += len(missing)
        result.evicted += len(gaps)
        complete = complete and not missing and max(have | {0}) <= last
        result.epochs[epoch] = {"committed": last, "stored": len(have), "missing": len(missing),
                                "named_by_gaps": len(gaps)}
    result.complete = complete
    return result


def live_latencies(hub_db: Path, since: float, source: str = SOURCE) -> list[float]:
    """Seconds from edge commit (`recordedtime`) to hub receipt, for packets recorded after
    `since` (wall clock)."""
    from sync.packet import parse_time

    if not hub_db.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{hub_db}?mode=ro", uri=True,
                                            timeout=10)) as conn:
        rows = conn.execute("SELECT received_at, body FROM packets WHERE source = ?",
                            (source,)).fetchall()
    out = []
    for received, body in rows:
        recorded = parse_time(json.loads(body)["recordedtime"])
        if recorded >= since:
            out.append(float(received) - recorded)
    return out


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


class FaultRig:
    """A stack producing ~100-200 packets/s, with fault helpers and end-to-end counting."""

    def __init__(self, workdir: Path, *, cycle_s: float = 0.006, poll_interval: str = "5ms",
                 gateway_overrides: dict[str, dict[str, Any]] | None = None,
                 seed: int = 1) -> None:
        overrides = {"mqtt": {"ack_timeout": "3s"}}
        for section, values in (gateway_overrides or {}).items():
            overrides.setdefault(section, {}).update(values)
        self.stack = Stack(workdir, progress_every=1, poll_interval=poll_interval,
                           gateway_overrides=overrides, log_level="WARNING")
        self.scenario = sc.Scenario(
            orders=(sc.WorkOrder(5001, 300), sc.WorkOrder(5002, 200)),
            cycle_s=cycle_s, cycle_jitter_s=cycle_s / 3, scrap_rate=0.05,
            changeover_s=0.05, seed=seed, loop=True,
        )
        self._stop_production = asyncio.Event()
        self._production: asyncio.Task[sc.GroundTruth] | None = None
        self.rng = random.Random(seed)

    @property
    def workdir(self) -> Path:
        return self.stack.workdir

    @property
    def hub_db(self) -> Path:
        return self.stack.workdir / "hub.db"

    async def start(self) -> None:
        await self.stack.start()
        await self.stack.wait_polled()
        self.start_production()

    def start_production(self) -> None:
        """Drive the press through the plan (again) until `stop_production`."""
        self._stop_production = asyncio.Event()
        self._production = asyncio.create_task(
            sc.run(self.stack.device, self.scenario, self._stop_production))

    async def stop_production(self) -> None:
        self._stop_production.set()
        if self._production is not None:
            await self._production

    def committed(self) -> int:
        return sum(edge_epochs(self.stack.outbox_path).values())

    async def wait_committed(self, at_least: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.committed() < at_least:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the edge committed {self.committed()} < {at_least} "
                                   f"in {timeout}s")
            await asyncio.sleep(0.1)

    async def kill_gateway(self) -> None:
        self.stack.stop_gateway(kill=True)

    async def restart_gateway(self) -> None:
        self.stack.start_gateway()
        await self.stack.wait_polled()

    async def settle(self, timeout: float) -> Counts:
        """Wait (bounded) until the hub has every committed sequence; return the counts."""
        deadline = time.monotonic() + timeout
        while True:
            counts = count(self.stack.outbox_path, self.hub_db)
            if counts.lost == 0 and counts.complete:
                return counts
            if time.monotonic() > deadline:
                return counts
            await asyncio.sleep(0.25)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.stop_production()
        await self.stack.close()


async def run_kill_loop(workdir: Path, *, kills: int, packets: int, timeout: float = 600.0,
                        seed: int = 7) -> dict[str, Any]:
    """kill -9 the gateway `kills` times at random instants while >= `packets` are committed."""
    rig = FaultRig(workdir, seed=seed)
    started = time.monotonic()
    restarts = 0
    try:
        await rig.start()
        # Spread the kills over the run: about `packets / kills` commits between two kills,
        # each at a random instant within that stretch.
        per_kill = max(1, packets // (kills + 1))
        for _ in range(kills):
            target = rig.committed() + rig.rng.randint(per_kill // 2, per_kill * 3 // 2)
            await rig.wait_committed(target, timeout)
            await asyncio.sleep(rig.rng.uniform(0, 0.3))
            await rig.kill_gateway()
            await rig.restart_gateway()
            restarts += 1
        await rig.wait_committed(packets, timeout)
        await rig.stop_production()
        counts = await rig.settle(120)
    finally:
        await rig.close()
    return {**counts.as_dict(), "restarts": restarts,
            "seconds": round(time.monotonic() - started, 1)}
