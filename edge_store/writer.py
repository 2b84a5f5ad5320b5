"""Group commit for the event loop: many concurrent `append`s, one SQLite transaction per round.

On real edge storage one fsync costs 0.2-20 ms, so one transaction per packet
would cap the gateway at a few hundred packets per second. Appends go to the outbox's worker
thread (`edge_store.worker`), which takes everything queued (up to `max_batch` entries) into one
transaction and only then resolves each caller's future: when `await writer.append(entry)`
returns, the row is durable. While one commit runs, new entries queue up and form the next
group, so batches grow with load without any timer.
"""

from __future__ import annotations

import asyncio

from edge_store.outbox import Entry, Outbox, OutboxClosed
from edge_store.worker import OutboxWorker, worker_for


class GroupWriter:
    """Serialises appends from the event loop into group commits on one outbox.

    At most `max_queue` appends (an `append_many` counts once) wait for their commit; more
    wait for room (the producer is slowed to the disk's pace rather than memory growing
    without bound). A group commit takes queued appends until it holds `max_batch` entries
    (a larger `append_many` goes alone, unsplit).
    A cancelled `append` whose entry was already queued may still be committed: cancellation
    only stops the wait, it cannot take back a row that is on its way to disk.
    """

    def __init__(self, outbox: Outbox, *, max_batch: int = 1000, max_queue: int = 10_000) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch ({max_batch}) and max_queue ({max_queue}) must be >= 1")
        self.outbox = outbox
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._room: asyncio.Semaphore | None = None
        self._worker: OutboxWorker | None = None
        self._closing = False
        self._outstanding: set[asyncio.Future[list[int]]] = set()

    @property
    def transactions(self) -> int:
        """Committed transactions (group commits, ack deletes included)."""
        return self._worker.transactions if self._worker else 0

    @property
    def committed(self) -> int:
        return self._worker.committed if self._worker else 0

    @property
    def failed(self) -> int:
        return self._worker.failed if self._worker else 0

    def start(self) -> OutboxWorker:
        """Bind to the running loop and the outbox's worker thread (idempotent)."""
        if self._worker is None:
            self._worker = worker_for(self.outbox)
            self._worker.max_batch = self.max_batch
            self._room = asyncio.Semaphore(self.max_queue)
        return self._worker

    async def append(self, entry: Entry) -> int:
        """Queue `entry` and return its sequence once its transaction has committed.

        Raises an `OutboxError` (e.g. `RenderError`, `OutboxClosed`, `OutboxFull`) when it was
        not stored.
        """
        return (await self.append_many([entry]))[0]

    async def append_many(self, entries: list[Entry], state: bytes | None = None) -> list[int]:
        """Queue `entries` as one unit: all committed in one transaction with consecutive
        sequences in the given order, or none (the error is raised, nothing is stored).
        `state` (the engine state that produced them) is stored in that same transaction;
        a unit of a state alone is a commit too.

        The unit counts once against `max_queue` and is never split across transactions.
        """
        if self._closing:
            raise OutboxClosed("outbox writer is closed")
        if not entries and state is None:
            return []
        worker = self.start()
        assert self._room is not None
        async with self._room:
            future = worker.append(list(entries), state)
            self._outstanding.add(future)
            try:
                return await future
            finally:
                self._outstanding.discard(future)

    async def close(self) -> None:
        """Wait for every append already queued to commit, then refuse new ones."""
        if self._closing:
            return
        self._closing = True
        if self._outstanding:
            await asyncio.gather(*self._outstanding, return_exceptions=True)

    async def __aenter__(self) -> GroupWriter:
        self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()
