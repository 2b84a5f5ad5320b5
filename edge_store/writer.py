"""Group commit for the event loop: many concurrent `append`s, one SQLite transaction per round.

On real edge storage one fsync costs 0.2-20 ms (FIELD-NOTES.md), so one transaction per packet
would cap the gateway at a few hundred packets per second. The writer task takes everything
queued (up to `max_batch` entries), commits it in one transaction in a worker thread, and only
then resolves each caller's future: when `await writer.append(entry)` returns, the row is durable.
While one commit runs, new entries queue up and form the next group, so batches grow with load
without any timer.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from edge_store.outbox import Entry, Outbox, OutboxClosed, OutboxError, RenderError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Item:
    """One caller's entries: committed together, in order, with consecutive sequences."""

    entries: list[Entry]
    future: asyncio.Future[list[int]] = field(repr=False)


class GroupWriter:
    """Serialises appends from the event loop into group commits on one outbox.

    The queue holds at most `max_queue` appends (an `append_many` counts once); when it is
    full, `append` waits for room (the producer is slowed to the disk's pace rather than memory
    growing without bound). A group commit takes queued appends until it holds `max_batch`
    entries (a larger `append_many` goes alone, unsplit).
    A cancelled `append` whose entry was already queued may still be committed: cancellation
    only stops the wait, it cannot take back a row that is on its way to disk.
    """

    def __init__(self, outbox: Outbox, *, max_batch: int = 1000, max_queue: int = 10_000) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch ({max_batch}) and max_queue ({max_queue}) must be >= 1")
        self.outbox = outbox
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue(maxsize=max_queue)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.transactions = 0  # committed transactions (group commits)
        self.committed = 0  # rows committed
        self.failed = 0  # entries not stored (their append raised)

    def start(self) -> None:
        """Start the writer task on the running loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="outbox-writer")

    async def append(self, entry: Entry) -> int:
        """Queue `entry` and return its sequence once its transaction has committed.

        Raises an `OutboxError` (e.g. `RenderError`, `OutboxClosed`) when it was not stored.
        """
        return (await self.append_many([entry]))[0]

    async def append_many(self, entries: list[Entry]) -> list[int]:
        """Queue `entries` as one unit: all committed in one transaction with consecutive
        sequences in the given order, or none (the error is raised, nothing is stored).

        The unit counts once against `max_queue` and is never split across transactions.
        """
        if self._closing:
            raise OutboxClosed("outbox writer is closed")
        if not entries:
            return []
        self.start()
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(list(entries), future))
        return await future

    async def close(self) -> None:
        """Commit everything already queued, then stop the writer task."""
        if self._closing:
            return
        self._closing = True
        if self._task is None:
            return
        await self._queue.put(None)
        await self._task

    async def __aenter__(self) -> GroupWriter:
        self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            batch: list[_Item] = []
            size = 0
            if first is None:
                stopping = True
            else:
                batch.append(first)
                size = len(first.entries)
            while size < self.max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    continue
                batch.append(item)
                size += len(item.entries)
            if batch:
                await self._commit(batch)
        # An append that was already waiting for room when close() began lands after the
        # sentinel: refuse it rather than leave its caller waiting forever.
        while not self._queue.empty():
            late = self._queue.get_nowait()
            if late is not None:
                self._fail(late, OutboxClosed("outbox writer closed before this append"))

    async def _commit(self, batch: list[_Item]) -> None:
        """Commit `batch` in one transaction; a failing render drops only its caller's unit."""
        while batch:
            entries = [entry for item in batch for entry in item.entries]
            try:
                # SQLite blocks (fsync): keep it off the event loop.
                seqs = await asyncio.to_thread(self.outbox.append, entries)
            except RenderError as error:
                self._fail(batch.pop(self._owner(batch, error.index)), error)
                continue
            except OutboxError as error:
                for item in batch:
                    self._fail(item, error)
                log.error(
                    "outbox group commit failed",
                    extra={"entries": len(entries), "error": str(error)},
                )
                return
            except Exception as error:
                # Supervisor boundary: the writer serves every producer and must outlive one
                # bad entry or driver bug; the callers get it as an OutboxError.
                wrapped = OutboxError(f"outbox append failed: {error!r}")
                wrapped.__cause__ = error
                for item in batch:
                    self._fail(item, wrapped)
                log.exception("outbox writer: unexpected error", extra={"entries": len(entries)})
                return
            self.transactions += 1
            self.committed += len(seqs)
            offset = 0
            for item in batch:
                count = len(item.entries)
                if not item.future.done():
                    item.future.set_result(seqs[offset : offset + count])
                offset += count
            return

    @staticmethod
    def _owner(batch: list[_Item], index: int) -> int:
        """Position in `batch` of the unit holding the flattened entry `index`."""
        for position, item in enumerate(batch):
            if index < len(item.entries):
                return position
            index -= len(item.entries)
        raise IndexError(index)

    def _fail(self, item: _Item, error: OutboxError) -> None:
        self.failed += len(item.entries)
        if not item.future.done():
            item.future.set_exception(error)
