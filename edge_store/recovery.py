"""Before the outbox is used: one process per file (the lock), and a corrupt file never reused.

The lock: two processes allocating sequences in one file would collide, so a gateway holds an
flock on `NAME.lock`, which the kernel drops when the process dies (kill -9).

A corrupt file at start: detect it, move it aside, never reuse it silently.

An edge box loses power mid-write, its flash wears out, someone copies a half file: SQLite then
reports "file is not a database" (SQLITE_NOTADB) or "database disk image is malformed"
(SQLITE_CORRUPT), or `PRAGMA quick_check` finds damage. The outbox moves such a file (and its
-wal and -shm companions) to `NAME.corrupt-YYYYmmddTHHMMSSZ` for someone to inspect, and starts a
new file with a new epoch, so the hub learns that history before it may be lost.
"""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from edge_store.errors import OutboxLocked

# The outbox's one logger, whichever of its modules logs.
log = logging.getLogger("edge_store.outbox")

_CORRUPTION_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


T = TypeVar("T")


def take_lock(path: Path) -> IO[str]:
    """Hold the outbox at `path` exclusively until the returned file is closed; raise
    `OutboxLocked` when another process holds it."""
    handle = path.with_name(path.name + ".lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise OutboxLocked(
            f"outbox {path} is in use by another process (a running gateway?): stop it first"
        ) from None
    return handle


def open_or_replace(path: Path, open_file: Callable[[bool], T]) -> tuple[T, Path | None]:
    """`open_file(True)`; when that finds the file corrupt, move it aside and open a new one
    with `open_file(False)` (a new file has nothing to check). Return what was opened and
    where the corrupt file went (None: it was sound)."""
    try:
        return open_file(True), None
    except Corrupt as error:
        moved = move_aside(path)
        log.error(
            "outbox file is corrupt: moved aside, starting a new epoch; packets "
            "pending in it did not reach the hub (they stay in the moved file)",
            extra={"path": str(path), "moved_to": str(moved), "error": str(error)},
        )
        return open_file(False), moved


class Corrupt(Exception):
    """The outbox file is damaged (raised while opening, before anything is written)."""


def is_corruption(error: SQLAlchemyError) -> bool:
    orig = getattr(error, "orig", None)
    return isinstance(orig, sqlite3.Error) and orig.sqlite_errorcode in _CORRUPTION_CODES


def check(conn: sa.Connection, path: Path) -> None:
    """Raise `Corrupt` when `PRAGMA quick_check` reports damage.

    quick_check reads every page once (about a second per GB here) but skips the costly index
    cross-checks of integrity_check; it runs once per start.
    """
    try:
        problems = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA quick_check(5)")]
    except SQLAlchemyError as error:
        if is_corruption(error):
            raise Corrupt(f"{path}: {getattr(error, 'orig', error)}") from error
        raise
    finally:
        if conn.in_transaction():
            conn.rollback()
    if problems != ["ok"]:
        raise Corrupt(f"{path}: quick_check: {'; '.join(problems)}")


def move_aside(path: Path) -> Path:
    """Rename the file and its -wal/-shm companions; return the new name of the file."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    suffix = 0
    while target.exists():
        suffix += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{suffix}")
    for companion in ("", "-wal", "-shm"):
        source = path.with_name(path.name + companion)
        if source.exists():
            source.rename(target.with_name(target.name + companion))
    return target
