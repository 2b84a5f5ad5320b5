"""Create or upgrade the hub schema with Alembic when the hub starts (SQLite and PostgreSQL).

A database made by the walking skeleton (tables, no `alembic_version`) is recognised and
stamped at revision 0001 first, so its rows are kept and only the later revisions run.
Concurrent starts take turns: on PostgreSQL on an advisory lock, on SQLite on an exclusive lock
of a file beside the database (SQLite's own locks do not cover Alembic's DDL and version stamp
as one step; six hub processes started together on a new file failed without it).
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Any fixed number: all hub workers serialise their migrations on it.
_LOCK_KEY = 0x6B65796F70


def alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


# Alembic's `context` is one module-level proxy: migrations in one process must not overlap.
_PROCESS_LOCK = threading.Lock()


def head() -> str:
    with _PROCESS_LOCK:
        return str(ScriptDirectory(str(MIGRATIONS)).get_current_head())


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (default: the newest)."""
    # The file lock covers the first connection too: it switches a new SQLite file to WAL,
    # which needs an exclusive lock that SQLite does not wait for (busy_timeout or not).
    with _sqlite_file_lock(engine):
        if revision == "head" and current_revision(engine) == head():
            return
        with _PROCESS_LOCK, engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            # Read under the lock: another process may have migrated while we waited.
            config = alembic_config(conn)
            versioned = MigrationContext.configure(conn).get_current_revision() is not None
            if not versioned and sa.inspect(conn).has_table("packets"):
                command.stamp(config, "0001")
            command.upgrade(config, revision)


@contextlib.contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """Hold `<database>.migrate.lock` exclusively while migrating a SQLite file."""
    database = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield
