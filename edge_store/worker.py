"""The one thread that does the outbox's SQLite work for the event loop.

One dedicated thread owns the outbox's connections (rather than an `asyncio.to_thread` call,
with its thread hop and GIL hand-off, per commit, read and ack delete) and works in rounds:
everything queued since the last round (appends from the group writer, the newest hub ack to
delete, pending reads for the uplink) is done together, appends and the ack delete in one
transaction (one fsync), and the results go back to the loop in one `call_soon_threadsafe` per
round.

Committed rows (with their bodies) are handed to listeners on the loop, in sequence order, so
the uplink can publish fresh packets without reading them back from disk.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_store.outbox import (
    Commit,
    Entry,
    Outbox,
    OutboxClosed,
    OutboxError,
    OutboxFull,
    RenderError,
    Row,
)

log = logging.getLogger(__name__)

# Deleting acknowledged rows can wait: alone it costs a transaction (an fsync on real flash),
# riding with the next append it costs nothing. Rows wait at most this long, or until this many.
ACK_DELAY_S = 0.25
ACK_ROWS_NOW = 2_000


@dataclass(slots=True)
class _Append:
    entries: list[Entry]
    future: asyncio.Future[list[int]] = field(repr=False)
    state: bytes | None = field(default=None, repr=False)  # the engine state behind them


@dataclass(slots=True)
class _Read:
    after: int
    limit: int
    upto: int
    future: asyncio.Future[list[Row]] = field(repr=False)


_Outcome = tuple[_Append, list[int] | OutboxError]


@dataclass(slots=True)
class _Round:
    """What one round of the worker does: appends to commit, the ack to delete (0: none),
    reads to answer, and whether it is the last round."""

    units: list[_Append]
    ack: int
    reads: list[_Read]
    stop: bool


class OutboxWorker:
    """Serialises an outbox's work on one thread; every public method is for the loop thread.

    `add_commit_listener(fn)`: `fn(rows)` on the loop after each commit, rows in seq order
    (gap rows included). `add_delete_listener(fn)`: `fn(upto)` after acknowledged rows went.
    """

    def __init__(self, outbox: Outbox, loop: asyncio.AbstractEventLoop, *,
                 max_batch: int = 1000) -> None:
        self.outbox = outbox
        self.loop = loop
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._appends: deque[_Append] = deque()
        self._reads: deque[_Read] = deque()
        self._ack_target = 0
        self._acked = 0
        # What the round in progress deletes: an ack beyond it waits for the next round, and
        # its wait (`_ack_since`) starts when it arrives, not when the first ack did.
        self._ack_taken = 0
        self._ack_since = 0.0
        self._ack_timer: asyncio.TimerHandle | None = None
        self._stopping = False
        self._commit_listeners: list[Callable[[list[Row]], None]] = []
        self._delete_listeners: list[Callable[[int], None]] = []
        self.transactions = 0
        self.committed = 0
        self.committed_upto = 0
        """Highest seq committed by this worker (written on its thread)."""
        self.delivered_upto = 0
        """Highest seq handed to the commit listeners (on the loop): rows in between are on
        their way to the listeners."""
        self.failed = 0
        self.rounds = 0
        self._thread = threading.Thread(target=self._run, name="outbox-worker", daemon=True)
        self._thread.start()

    # --- loop side -----------------------------------------------------------------------------

    def add_commit_listener(self, callback: Callable[[list[Row]], None]) -> None:
        self._commit_listeners.append(callback)

    def add_delete_listener(self, callback: Callable[[int], None]) -> None:
        self._delete_listeners.append(callback)

    def append(self, entries: list[Entry], state: bytes | None = None
               ) -> asyncio.Future[list[int]]:
        """Queue `entries` as one unit (one transaction, consecutive seqs); the future resolves
        with their seqs once committed, or fails with an `OutboxError`. `state` is stored in
        the same transaction (the latest unit's state wins within a group commit)."""
        future: asyncio.Future[list[int]] = self.loop.create_future()
        with self._cond:
            if self._stopping:
                future.set_exception(OutboxClosed(f"outbox {self.outbox.path} is closed"))
                return future
            self._appends.append(_Append(entries, future, state))
            self._cond.notify()
        return future

    def read(self, after: int, limit: int, upto: int = 2**62) -> asyncio.Future[list[Row]]:
        """Pending rows `after` < seq <= `upto`, at most `limit`, in seq order."""
        future: asyncio.Future[list[Row]] = self.loop.create_future()
        with self._cond:
            if self._stopping:
                future.set_exception(OutboxClosed(f"outbox {self.outbox.path} is closed"))
                return future
            self._reads.append(_Read(after, limit, upto, future))
            self._cond.notify()
        return future

    def ack(self, upto: int) -> None:
        """The hub has everything up to `upto`: delete it with the next append's transaction,
        or on its own after `ACK_DELAY_S` (coalesced either way).

        The thread is not woken per ack (at a packet per ack that was a thread wake-up per
        packet, ~90 us of CPU here, for nothing: the next append carries the delete). A timer on
        the loop wakes it when an ack has waited `ACK_DELAY_S`; `ACK_ROWS_NOW` rows wake it
        at once.
        """
        with self._cond:
            if upto <= self._ack_target:
                return
            if self._ack_target <= self._ack_taken:
                self._ack_since = time.monotonic()
            self._ack_target = upto
            if upto - self._acked >= ACK_ROWS_NOW:
                self._cond.notify()
        if self._ack_timer is None:
            self._ack_timer = self.loop.call_later(ACK_DELAY_S, self._ack_timeout)

    def _ack_timeout(self) -> None:
        self._ack_timer = None
        with self._cond:
            if self._stopping or self._ack_target <= self._ack_taken:
                return  # deleted (or being deleted) with an append meanwhile
            remaining = self._ack_since + ACK_DELAY_S - time.monotonic()
            if remaining <= 0:
                self._cond.notify()
        if remaining > 0:  # a newer ack started the wait later
            self._ack_timer = self.loop.call_later(remaining, self._ack_timeout)

    def _ack_due(self) -> bool:
        """An ack delete alone is worth a transaction (an fsync) when it has waited a while
        for an append to ride with, or when it frees many rows; called under the lock."""
        pending = self._ack_target - self._acked
        return pending > 0 and (pending >= ACK_ROWS_NOW
                                or time.monotonic() - self._ack_since >= ACK_DELAY_S)

    def stop(self) -> None:
        """Finish what is queued, then end the thread (blocks until it has)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    # --- worker thread -------------------------------------------------------------------------

    def _run(self) -> None:
        """Rounds until stopped: take what is queued, commit it (appends and the ack delete
        in one transaction), answer the reads, hand the results to the loop."""
        while True:
            work = self._take()
            self.rounds += 1
            outcome, rows, deleted = self._commit_round(work)
            answers = self._answer(work.reads)
            if not self._notify(outcome, rows, deleted, answers) or work.stop:
                return

    def _take(self) -> _Round:
        """Wait for work, then take what this round does (under the lock)."""
        with self._cond:
            while not (self._appends or self._reads or self._stopping or self._ack_due()):
                self._cond.wait(self._ack_wait())
            units = self._take_appends()
            ack = self._take_ack(units)
            reads = list(self._reads)
            self._reads.clear()
            stop = self._stopping and not self._appends and not units
        return _Round(units, ack, reads, stop)

    def _ack_wait(self) -> float | None:
        """How long an ack left pending may still wait for an append (None: none pending)."""
        if self._ack_target <= self._acked:
            return None
        return max(0.0, self._ack_since + ACK_DELAY_S - time.monotonic())

    def _take_appends(self) -> list[_Append]:
        """Queued appends up to `max_batch` entries (a larger unit goes alone, unsplit)."""
        units: list[_Append] = []
        size = 0
        while self._appends and (not units or size + len(self._appends[0].entries)
                                 <= self.max_batch):
            unit = self._appends.popleft()
            units.append(unit)
            size += len(unit.entries)
        return units

    def _take_ack(self, units: list[_Append]) -> int:
        """The ack this round deletes (0: none).

        A round for reads alone does not take the ack: it would make a read a transaction (an
        fsync); the next append, the stop or the delay takes it.
        """
        due = self._ack_target > self._acked and (units or self._stopping or self._ack_due())
        ack = self._ack_target if due else 0
        self._ack_taken = max(self._ack_taken, ack)
        return ack

    def _commit_round(self, work: _Round) -> tuple[list[_Outcome], list[Row], int]:
        """Commit the round's appends and ack delete (nothing to do: no transaction)."""
        if not (work.units or work.ack):
            return [], [], 0
        outcome, rows, deleted = self._commit(work.units, work.ack)
        if work.ack and self._acked < work.ack:
            with self._cond:  # not deleted: it is pending again, from now
                self._ack_taken = self._acked
                self._ack_since = time.monotonic()
        if rows:
            self.committed_upto = rows[-1].seq
        return outcome, rows, deleted

    def _answer(self, reads: list[_Read]) -> list[tuple[_Read, list[Row] | OutboxError]]:
        answers: list[tuple[_Read, list[Row] | OutboxError]] = []
        for read in reads:
            try:
                answers.append((read, self.outbox.pending(read.after, read.limit, read.upto)))
            except OutboxError as error:
                answers.append((read, error))
        return answers

    def _notify(self, outcome: list[_Outcome], rows: list[Row], deleted: int,
                answers: list[tuple[_Read, list[Row] | OutboxError]]) -> bool:
        """Hand the round's results to the loop; False when the loop is closed (nobody is
        waiting any more)."""
        if outcome or rows or deleted or answers:
            try:
                self.loop.call_soon_threadsafe(self._deliver, outcome, rows, deleted, answers)
            except RuntimeError:
                return False
        return True

    def _commit(self, units: list[_Append], ack: int) -> tuple[list[_Outcome], list[Row], int]:
        """Commit `units` (and the ack delete) in one transaction; a failing render drops only
        its own unit."""
        outcome: list[_Outcome] = []
        while True:
            entries = [entry for unit in units for entry in unit.entries]
            # Units are in emission order: the last state given is the newest.
            state = next((u.state for u in reversed(units) if u.state is not None), None)
            try:
                result: Commit = self.outbox.commit(entries, ack, state)
            except RenderError as error:
                outcome.append((units.pop(_owner(units, error.index)), error))
                continue
            except OutboxError as error:
                outcome.extend((unit, error) for unit in units)
                rows, deleted = self._after_failure(error, len(entries), ack)
                return outcome, rows, deleted
            outcome.extend(self._committed(units, result, ack))
            return outcome, result.stored, ack

    def _committed(self, units: list[_Append], result: Commit, ack: int) -> list[_Outcome]:
        """Count a committed transaction; each unit's seqs."""
        self.transactions += 1
        self.committed += len(result.rows)
        if ack:
            self._acked = ack
        outcome: list[_Outcome] = []
        offset = 0
        for unit in units:
            count = len(unit.entries)
            outcome.append((unit, [r.seq for r in result.rows[offset:offset + count]]))
            offset += count
        return outcome

    def _after_failure(self, error: OutboxError, entries: int, ack: int) -> tuple[list[Row], int]:
        """After a failed group commit, delete the acknowledged rows alone: they must still go,
        they are what frees room. Return the rows that delete added and what it deleted."""
        if not isinstance(error, (OutboxFull, OutboxClosed)):
            log.error("outbox group commit failed",
                      extra={"entries": entries, "error": str(error)})
        if not (ack and entries) or isinstance(error, OutboxClosed):
            return [], 0
        try:
            deleted_only = self.outbox.commit([], ack)
        except OutboxError:
            return [], 0
        self._acked = ack
        return deleted_only.gap_rows, ack

    # --- back on the loop ----------------------------------------------------------------------

    def _deliver(
        self,
        outcome: list[_Outcome],
        rows: list[Row],
        deleted: int,
        answers: list[tuple[_Read, list[Row] | OutboxError]],
    ) -> None:
        for unit, value in outcome:
            if isinstance(value, OutboxError):
                self.failed += len(unit.entries)
            _resolve(unit.future, value)
        if rows:
            self.delivered_upto = max(self.delivered_upto, rows[-1].seq)
            for listener in self._commit_listeners:
                listener(rows)
        if deleted:
            for on_deleted in self._delete_listeners:
                on_deleted(deleted)
        for read, answer in answers:
            _resolve(read.future, answer)


def _resolve(future: asyncio.Future[Any], value: object) -> None:
    """Set the future's result, or its exception for an `OutboxError` (unless cancelled)."""
    if future.done():
        return
    if isinstance(value, OutboxError):
        future.set_exception(value)
    else:
        future.set_result(value)


def _owner(units: list[_Append], index: int) -> int:
    """Position in `units` of the unit holding the flattened entry `index`."""
    for position, unit in enumerate(units):
        if index < len(unit.entries):
            return position
        index -= len(unit.entries)
    raise IndexError(index)


def worker_for(outbox: Outbox) -> OutboxWorker:
    """The outbox's worker, started on the running loop at first use (one per outbox)."""
    worker: OutboxWorker | None = outbox.worker
    if worker is None or worker.loop is not asyncio.get_running_loop():
        if worker is not None:
            worker.stop()
        worker = outbox.worker = OutboxWorker(outbox, asyncio.get_running_loop())
    return worker
