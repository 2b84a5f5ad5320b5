"""Alembic migrations: the same schema as hub/schema.py on SQLite and PostgreSQL, created on
start, and a walking-skeleton database upgraded in place with its rows kept."""

from __future__ import annotations

import threading

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from test_hub_store import incoming

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
        assert migrate.current_revision(store.engine) == "0002"
        assert _diff(store.engine) == []
        # Starting again is a no-op.
        Store(hub_db_url).close()
        assert migrate.current_revision(store.engine) == "0002"
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
        assert migrate.current_revision(store.engine) == "0002"
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
