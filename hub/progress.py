"""The contiguous sequence of each `(source, epoch)`: what the hub acknowledges to an edge.

A batch usually runs on from the stored value with nothing stored past it (hub/ingest_sql.py
saves that in one statement). Anything else takes the walk here: stored seqs after the value
read under the progress lock, stepping over ranges the edge declared dropped
(`keyop.outbox.gap` records, docs/architecture.md guarantee 5) and seqs the hub itself refused
(`refused_seqs`: dead-lettered packets), up to the first hole, which is reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from hub.schema import packets, refused_seqs, source_progress

# How many stored seqs one step of the contiguous walk reads.
_WALK_CHUNK = 5_000


@dataclass(frozen=True, slots=True)
class Gap:
    """Missing seqs `first..last` for one `(source, epoch)`, with later seqs already stored."""

    source: str
    epoch: str
    first: int
    last: int


@dataclass(slots=True)
class Progress:
    """The outcome of one batch for one `(source, epoch)`."""

    source: str
    epoch: str
    contiguous: int
    previous: int
    new: int = 0
    duplicates: int = 0
    # Events of this batch the hub refused (dead-lettered) with a trustworthy identity.
    refused: int = 0

    @property
    def advanced(self) -> bool:
        return self.contiguous > self.previous


def advance(conn: Connection, prog: Progress, now: float, save: Any) -> Gap | None:
    """Walk stored seqs after `prog.previous` (the value read under the progress lock);
    persist the new value (with `save`, the statement of `progress_save`); return a gap."""
    contiguous = prog.previous
    gap: Gap | None = None
    declared: list[tuple[int, int]] | None = None  # ranges the edge named in gap records
    while True:
        seqs = conn.execute(
            sa.select(packets.c.seq)
            .where(
                packets.c.source == prog.source,
                packets.c.epoch == prog.epoch,
                packets.c.seq > contiguous,
            )
            .order_by(packets.c.seq)
            .limit(_WALK_CHUNK)
        ).scalars().all()
        for seq in seqs:
            if seq <= contiguous:
                continue  # inside a declared range we already stepped over
            if seq != contiguous + 1:
                if declared is None:
                    declared = declared_gaps(conn, prog.source, prog.epoch, prog.previous)
                covered = _covering(declared, contiguous + 1)
                if covered is not None and covered + 1 >= seq:
                    contiguous = max(seq, covered)
                    continue
                if covered is not None:
                    contiguous = covered
                gap = Gap(prog.source, prog.epoch, contiguous + 1, seq - 1)
                break
            contiguous = seq
        if gap is not None:
            break
        if len(seqs) < _WALK_CHUNK:
            # Nothing stored further: settled ranges may still run on from here (a refused
            # packet that was the last one sent), and stored seqs may follow them.
            if declared is None:
                declared = declared_gaps(conn, prog.source, prog.epoch, prog.previous)
            covered = _covering(declared, contiguous + 1)
            if covered is None:
                break
            contiguous = covered
    prog.contiguous = contiguous
    if contiguous > prog.previous:
        conn.execute(save, [{"source": prog.source, "epoch": prog.epoch,
                             "contiguous_seq": contiguous, "updated_at": now}])
    return gap


def declared_gaps(conn: Connection, source: str, epoch: str, after: int = 0
                  ) -> list[tuple[int, int]]:
    """Sequence ranges settled without a stored packet: those the edge said it had to drop
    (`keyop.outbox.gap` records, docs/architecture.md guarantee 5) and those the hub refused.
    They count as accounted for, so the acknowledgement can pass them. Refused seqs up to
    `after` (the contiguous value already saved) are not read: they are behind it for good."""
    bodies = conn.execute(
        sa.select(packets.c.body).where(
            packets.c.source == source, packets.c.epoch == epoch,
            packets.c.type == "keyop.outbox.gap",
        )
    ).scalars().all()
    ranges = []
    for body in bodies:
        try:
            gap = json.loads(body)["data"]["gap"]
            ranges.append((int(gap["fromSequence"]), int(gap["toSequence"])))
        except (ValueError, KeyError, TypeError):
            continue  # validated at ingest; a bad one simply covers nothing
    refused = conn.execute(
        sa.select(refused_seqs.c.seq).where(
            refused_seqs.c.source == source, refused_seqs.c.epoch == epoch,
            refused_seqs.c.seq > after)
    ).scalars().all()
    ranges += [(int(seq), int(seq)) for seq in refused]
    return sorted(ranges)


def _covering(ranges: list[tuple[int, int]], seq: int) -> int | None:
    """How far declared ranges (sorted by start) reach without a hole, starting at `seq`."""
    reach = seq - 1
    for low, high in ranges:
        if low <= reach + 1 <= high:
            reach = high
    return reach if reach >= seq else None


def progress_save(insert: Any) -> Any:
    """The upsert of a `(source, epoch)`'s contiguous seq, built on the dialect's `insert`."""
    stmt = insert(source_progress)
    excluded = stmt.excluded
    # Never move backwards, even if a concurrent hub worker got further.
    return stmt.on_conflict_do_update(
        index_elements=[source_progress.c.source, source_progress.c.epoch],
        set_={
            "contiguous_seq": sa.case(
                (excluded.contiguous_seq > source_progress.c.contiguous_seq,
                 excluded.contiguous_seq),
                else_=source_progress.c.contiguous_seq,
            ),
            "updated_at": excluded.updated_at,
        },
    )
