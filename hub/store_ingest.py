"""The hub store's ingest writes: a batch of packets in one transaction, with its dead
letters, refused sequences, operation states, progress and its suppliers' feed entries.

Delivery guarantee 4: each `(source, epoch, seq)` is stored once (a unique key, inserted with
ON CONFLICT DO NOTHING), repeats are counted, gaps are reported, never papered over. What the
batch's new packets add to the suppliers' feeds is appended in the same transaction
(hub/feed_store.py), so a stored event is never without its feed entries.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from hub import feed_store
from hub.ingest_sql import PacketRow
from hub.progress import Gap, Progress, advance
from hub.schema import dead_letters, packets, refused_seqs
from hub.state import StateRow, state_rows
from hub.store_base import StoreBase, driver_errors, storable
from sync import topics
from sync.packet import Packet, parse_time

# A dead letter keeps at most this much of its payload (and the whole payload's size), and a
# reason of at most REASON_CHARS: a flood of 64 KB junk costs the database little.
DEAD_LETTER_PREFIX = 4096
REASON_CHARS = 2000
# A packet's identity: (source, epoch, seq).
Ident = tuple[str, str, int]


@dataclass(frozen=True, slots=True)
class Incoming:
    """A validated packet with its canonical JSON object (docs/packet.md's fields only, as
    `hub.validate.validate_event` re-serialises it) and, when the caller has it, that object's
    compact JSON text (stored as the body)."""

    packet: Packet
    raw: dict[str, Any]
    body: str | None = None
    # The event time the hub orders by (state, progress points), as hub/admission.py parsed
    # it (a time too far in the future is held at the hub's receive time); None: parse it.
    time: float | None = None


class DeadLetter(NamedTuple):
    """A message (or part of one) the hub could not take, kept for someone to see."""

    topic: str
    reason: str
    payload: bytes
    # How many bad events of the message this letter stands for.
    items: int = 1


@dataclass(slots=True)
class StoreResult:
    """What `store_batch` did: per-(source, epoch) progress, totals and gaps seen."""

    progress: dict[tuple[str, str], Progress] = field(default_factory=dict)
    gaps: list[Gap] = field(default_factory=list)
    # (work order, operation) whose state this batch may have changed.
    state_keys: set[tuple[str, str]] = field(default_factory=set)
    # The rows this batch inserted: (pk, the packet's raw JSON object).
    inserted: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    # Packets refused because their id is another packet's (dead-lettered by the store).
    id_clashes: int = 0
    # Entries appended to suppliers' feeds.
    appended: int = 0

    @property
    def new(self) -> int:
        return sum(p.new for p in self.progress.values())

    @property
    def duplicates(self) -> int:
        return sum(p.duplicates for p in self.progress.values())

    @property
    def refused(self) -> int:
        return sum(p.refused for p in self.progress.values())

    def absorb(self, later: StoreResult) -> None:
        """Add the result of a later transaction of the same batch (a batch split to isolate
        an event the store refused): its progress is the newer one."""
        for key, prog in later.progress.items():
            mine = self.progress.get(key)
            if mine is None:
                self.progress[key] = prog
                continue
            mine.contiguous = max(mine.contiguous, prog.contiguous)
            mine.new += prog.new
            mine.duplicates += prog.duplicates
            mine.refused += prog.refused
        self.gaps = [g for g in self.gaps if g.first > self.progress[(g.source, g.epoch)]
                     .contiguous] + later.gaps
        self.state_keys |= later.state_keys
        self.inserted += later.inserted
        self.id_clashes += later.id_clashes
        self.appended += later.appended


class IngestMixin(StoreBase):
    """Ingest writes (see the module docstring)."""

    def store_batch(self, batch: Sequence[Incoming], received_at: float | None = None, *,
                    refused: Sequence[Ident] = (),
                    letters: Sequence[DeadLetter] = ()) -> StoreResult:
        """Store a batch in one transaction; advance contiguous seqs; report duplicates and gaps.

        Duplicates (already stored, or repeated inside the batch) are absorbed and counted.
        Every touched `(source, epoch)` has its contiguous seq recomputed, duplicates included,
        so a hole that another hub worker filled is picked up on the next repeat. `refused`
        are identities of packets the hub dead-lettered: recorded as settled in the same
        transaction, so the acknowledgement can pass them; `letters`, the dead letters of the
        batch's messages, are written in it too (one commit for the whole batch).
        """
        result = StoreResult()
        if not batch and not refused:
            if letters:
                self.dead_letter_many(letters)
            return result
        now = time.time() if received_at is None else received_at
        for source, epoch, _seq in refused:
            prog = result.progress.get((source, epoch))
            if prog is None:
                prog = result.progress[(source, epoch)] = Progress(source, epoch, 0, 0)
            prog.refused += 1
        rows: list[PacketRow] = []
        seen: set[tuple[str, str, int]] = set()
        by_ident: dict[tuple[str, str, int], Incoming] = {}
        for item in batch:
            p = item.packet
            key = (p.source, p.sourceepoch)
            prog = result.progress.get(key)
            if prog is None:
                prog = result.progress[key] = Progress(p.source, p.sourceepoch, 0, 0)
            ident = (p.source, p.sourceepoch, p.seq)
            if ident in seen:
                prog.duplicates += 1
                continue
            seen.add(ident)
            by_ident[ident] = item
            rows.append(_packet_row(item, now))
        # One order of keys for every writer: two hub workers inserting the same keys cannot
        # deadlock on PostgreSQL. (Tuples: (source, epoch, seq) first, and unique.)
        rows.sort()
        with self._writing(), self.engine.begin() as conn:
            dbapi = conn.connection.dbapi_connection
            # Lock each (source, epoch) progress row first, in one order: two hub workers that
            # store parts of one source's stream take turns, so the later one sees the earlier
            # one's rows and its contiguous walk misses nothing (no ack left behind).
            with driver_errors(conn, "store_batch: lock and insert"):
                current, inserted = self._ingest.lock_and_insert(
                    dbapi, sorted(result.progress), rows, now)
            settled = self._write_refusals(conn, result, refused, letters,
                                           [i for i in seen if i not in inserted], by_ident, now)
            states = state_rows(((by_ident[i].packet, pk, by_ident[i].time)
                                 for i, pk in inserted.items()), now)
            result.state_keys = {(s.work_order, s.operation) for s in states}
            result.inserted = [(pk, by_ident[i].raw) for i, pk in inserted.items()]
            batch_seqs: dict[tuple[str, str], list[int]] = {}
            for source, epoch, seq in sorted(seen):
                prog = result.progress[(source, epoch)]
                batch_seqs.setdefault((source, epoch), []).append(seq)
                if (source, epoch, seq) in inserted:
                    prog.new += 1
                elif (source, epoch, seq) not in settled:
                    prog.duplicates += 1
            for source, epoch, seq in settled:
                batch_seqs.setdefault((source, epoch), []).append(seq)
            self._advance_all(conn, result, current, batch_seqs, states, now)
            if self.feed_routing is not None and inserted:
                # Last in the transaction: appending locks feed heads (hub/feed_store.py).
                appends = self.feed_routing.entries(conn, sorted(
                    (pk, by_ident[i]) for i, pk in inserted.items()))
                result.appended = len(feed_store.append(conn, appends, now))
        if result.appended:
            self.appended.notify()
        return result

    def _write_refusals(self, conn: Connection, result: StoreResult, refused: Sequence[Ident],
                        letters: Sequence[DeadLetter], skipped: list[Ident],
                        by_ident: dict[Ident, Incoming], now: float) -> set[Ident]:
        """Write the batch's dead letters and settle its refused seqs, in its transaction.

        Rows the insert `skipped` that are stored under no (source, epoch, seq) clash on their
        `id`: refused, dead-lettered and settled here too, since the dedupe key (source, id)
        would otherwise swallow them and leave a hole for ever. Returns every settled seq.
        """
        clashes = self._id_clashes(conn, skipped, by_ident)
        letters = [*letters, *(
            DeadLetter(topics.up_events(topics.gateway_of(i[0])), reason,
                       (by_ident[i].body or "").encode())
            for i, reason in clashes.items())]
        if letters:
            conn.execute(dead_letters.insert(), _dead_letter_rows(letters, now))
        for source, epoch, _seq in clashes:
            result.progress[(source, epoch)].refused += 1
        result.id_clashes = len(clashes)
        settled = set(refused) | set(clashes)
        if settled:
            conn.execute(self._insert(refused_seqs).on_conflict_do_nothing(), [
                {"source": s, "epoch": e, "seq": q, "refused_at": now}
                for s, e, q in sorted(settled)])
        return settled

    def _id_clashes(self, conn: Connection, skipped: list[Ident],
                    by_ident: dict[Ident, Incoming]) -> dict[Ident, str]:
        """Of rows the insert skipped, those not stored under their own (source, epoch, seq):
        their `id` is taken by another packet of the source. Each with the reason."""
        if not skipped:
            return {}
        key = sa.tuple_(packets.c.source, packets.c.epoch, packets.c.seq)
        stored: set[Ident] = set()
        for i in range(0, len(skipped), 300):
            stored.update((r.source, r.epoch, r.seq) for r in conn.execute(
                sa.select(packets.c.source, packets.c.epoch, packets.c.seq)
                .where(key.in_(skipped[i:i + 300]))).all())
        return {
            ident: (f"id: {by_ident[ident].packet.id!r} is already the id of another packet "
                    f"of {ident[0]} (an id is unique per source; this is sequence {ident[2]})")
            for ident in skipped if ident not in stored}

    def _advance_all(self, conn: Connection, result: StoreResult,
                     current: dict[tuple[str, str], int],
                     batch_seqs: dict[tuple[str, str], list[int]], states: list[StateRow],
                     now: float) -> None:
        """Upsert `states`, and new contiguous seqs for every `(source, epoch)` of a batch.

        The usual case, a stream arriving in order: the batch's new seqs run on from the
        stored contiguous value, and nothing is stored past the run (one probe for all
        sources says so, in the statement that saves the new values and upserts the states).
        Anything else (a hole, rows stored past the run by an earlier out-of-order arrival or
        another worker) takes the full walk of `hub.progress.advance`.
        Fewer round trips matter: each one's reply waits for the GIL behind the busy ingest
        loop.
        """
        tentative: dict[tuple[str, str], int] = {}
        for key, prog in result.progress.items():
            prog.previous = current[key]
            # The batch's seqs, refused ones included (settled like stored ones).
            run = sorted({seq for seq in batch_seqs.get(key, ()) if seq > prog.previous})
            if run == list(range(prog.previous + 1, prog.previous + 1 + len(run))):
                tentative[key] = prog.previous + len(run)
        beyond: set[tuple[str, str]] = set()
        if states or tentative:
            with driver_errors(conn, "store_batch: states and progress"):
                beyond = self._ingest.finish(conn.connection.dbapi_connection, states,
                                             tentative, now)
        for key, prog in sorted(result.progress.items()):
            if key in tentative and key not in beyond:
                prog.contiguous = tentative[key]  # saved by `finish`
                continue
            gap = advance(conn, prog, now, self._progress_save)
            if gap is not None:
                result.gaps.append(gap)

    def dead_letter_many(self, letters: Sequence[DeadLetter | tuple[str, str, bytes]]) -> None:
        """Keep what the hub could not take, with the reason, for someone to see: at most
        DEAD_LETTER_PREFIX bytes of each payload (and its whole size)."""
        rows = _dead_letter_rows(letters, time.time())
        with self._writing(), self.engine.begin() as conn:
            conn.execute(dead_letters.insert(), rows)


def _dead_letter_rows(letters: Sequence[DeadLetter | tuple[str, str, bytes]], now: float
                      ) -> list[dict[str, Any]]:
    rows = []
    for letter in letters:
        topic, reason, payload, items = DeadLetter(*letter)
        rows.append({"received_at": now, "topic": storable(topic, 512),
                     "reason": storable(reason, REASON_CHARS),
                     "payload": bytes(payload[:DEAD_LETTER_PREFIX]),
                     "size": len(payload), "items": items})
    return rows


def _packet_row(item: Incoming, received_at: float) -> PacketRow:
    """The values of hub/ingest_sql.py's PACKET_COLUMNS for one packet."""
    p = item.packet
    data = p.data
    return (
        p.source,
        p.sourceepoch,
        p.seq,
        p.id,
        p.type,
        p.subject,
        data.workOrder.id if data.workOrder else None,
        data.operation.id if data.operation else None,
        parse_time(p.time) if item.time is None else item.time,
        received_at,
        data.quantities.good if data.quantities is not None else None,
        item.body if item.body is not None else json.dumps(
            item.raw, separators=(",", ":"), ensure_ascii=False),
    )


