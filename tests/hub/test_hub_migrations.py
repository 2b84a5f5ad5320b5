"""Alembic migrations: the same schema as hub/schema.py on SQLite and PostgreSQL, created on
start, and a walking-skeleton database upgraded in place with its rows kept."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from hubkit import incoming

from hub import migrate
from hub.schema import metadata
from hub.store import Store


def _diff(engine: sa.Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def test_migrations_create_the_schema_the_code_uses(hub_db_url: str) -> None:
    store = Store(hub_db_url)
    try:
        assert migrate.current_revision(store.engine) == "0006"
        assert _diff(store.engine) == []
        # Starting again is a no-op.
        Store(hub_db_url).close()
        assert migrate.current_revision(store.engine) == "0006"
    finally:
        store.close()


def test_a_skeleton_database_is_upgraded_in_place(hub_db_url: str) -> None:
    engine = sa.create_engine(hub_db_url)
    migrate.upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE alembic_version"))  # as the skeleton left it
        conn.execute(sa.text(
            "INSERT INTO packets (source, epoch, seq, id, type, subject, event_time, "
            "received_at, body) VALUES ('plant1/edge-07', '01JCZ0K3M9B4X2W7Q5N8D1F6HA', 1, "
            "'01JDA5Q1Y4S7M2R8K3VZC6TB9E', 'keyop.operation.progress', 'WO-1/OP1', 1, 1, '{}')"))
    engine.dispose()
    store = Store(hub_db_url)
    try:
        assert migrate.current_revision(store.engine) == "0006"
        assert store.count_packets() == 1
        assert store.store_batch([incoming(2)]).new == 1
        assert _diff(store.engine) == []
    finally:
        store.close()


def test_concurrent_starts_take_turns(hub_db_url: str) -> None:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            Store(hub_db_url).close()
        except BaseException as error:  # reported below
            errors.append(error)

    if hub_db_url.startswith("sqlite"):
        Store(hub_db_url).close()  # SQLite: one file, one creator; then concurrent opens
    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def test_hub_processes_starting_together_on_a_new_sqlite_file(tmp_path: Path) -> None:
    """Several hub workers started at once on a database file nobody has created yet: one
    creates the schema, the others wait for it and find it done; none fails."""
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    go = tmp_path / "go"
    # Each process imports everything first, says so, then waits for the common start, so the
    # migrations really overlap (started cold, import times would stagger them).
    code = (
        "import sys, time, pathlib; from hub.store import Store\n"
        "print('ready', flush=True)\n"
        "go = pathlib.Path(sys.argv[2]); deadline = time.monotonic() + 60\n"
        "while not go.exists() and time.monotonic() < deadline: time.sleep(0.001)\n"
        "Store(sys.argv[1]).close()\n"
    )
    starts = [subprocess.Popen([sys.executable, "-c", code, url, str(go)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(6)]
    for start in starts:
        assert start.stdout is not None and start.stdout.readline().strip() == "ready"
    go.touch()
    failures = []
    for start in starts:
        _, err = start.communicate(timeout=120)
        if start.returncode != 0:
            failures.append([line for line in err.splitlines() if "Error" in line][:1])
    assert failures == []
    engine = sa.create_engine(url)
    try:
        assert migrate.current_revision(engine) == migrate.head()
        assert _diff(engine) == []
    finally:
        engine.dispose()
