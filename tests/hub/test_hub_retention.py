"""Retention of dead letters and the audit log: old rows go, recent ones stay, in chunks, one
worker at a time, scheduled by APScheduler on the hub's loop (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from hub import retention as retention_module
from hub.config import HubConfig, HubConfigError, parse_config
from hub.retention import Retention
from hub.schema import audit_log, dead_letters
from hub.store import Store
from hub.supervisor import Supervisor

DAY = 86_400.0
NOW = time.time()


def config(db_url: str, retention: str = "") -> HubConfig:
    return parse_config(f"""
hub: {{id: hub, database: "{db_url}"}}
{retention}
""", "retention.yaml")


@pytest.fixture
def store(hub_db_url: str) -> Iterator[Store]:
    made = Store(hub_db_url)
    yield made
    made.close()


def plant(store: Store, *, letters: dict[float, int], audits: dict[float, int]) -> None:
    """Rows of each age in days: {age: how many}."""
    with store.engine.begin() as conn:
        for age, count in letters.items():
            conn.execute(dead_letters.insert(), [
                {"received_at": NOW - age * DAY, "topic": "keyop/v1/up/edge-07/events",
                 "reason": f"old {age}", "payload": b"{", "size": 1, "items": 1}
                for _ in range(count)])
        for age, count in audits.items():
            conn.execute(audit_log.insert(), [
                {"at": NOW - age * DAY, "supplier": "acme", "method": "GET",
                 "path": "/v1/orders", "query": "", "status": 200, "client": "127.0.0.1",
                 "count": 1} for _ in range(count)])


def ages(store: Store) -> tuple[list[int], list[int]]:
    """The remaining rows' ages in whole days, sorted."""
    with store.engine.connect() as conn:
        letters = conn.execute(sa.select(dead_letters.c.received_at)).scalars().all()
        audits = conn.execute(sa.select(audit_log.c.at)).scalars().all()
    return (sorted(round((NOW - t) / DAY) for t in letters),
            sorted(round((NOW - t) / DAY) for t in audits))


def test_the_defaults_and_a_typo() -> None:
    settings = config("sqlite:///x.db").retention
    assert (settings.dead_letters_days, settings.audit_days, settings.interval_s) == (
        30, 90, 3600)
    with pytest.raises(HubConfigError, match=r"retention.yaml:3:\d+: retention.audit_day: "
                                          "unknown key 'audit_day'"):
        config("sqlite:///x.db", "retention: {audit_day: 10}")
    with pytest.raises(HubConfigError, match=r"retention\.interval_s"):
        config("sqlite:///x.db", "retention: {interval_s: 0}")


def test_old_rows_go_recent_ones_stay_in_chunks(store: Store, hub_db_url: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention_module, "CHUNK", 100)
    plant(store, letters={40: 250, 29: 3, 1: 2}, audits={100: 120, 89: 4})
    purge = Retention(config(hub_db_url), store)
    assert purge.purge(now=NOW) == {"dead_letters": 250, "audit_log": 120}
    assert ages(store) == ([1, 1, 29, 29, 29], [89] * 4)
    assert purge.purge(now=NOW) == {"dead_letters": 0, "audit_log": 0}  # idempotent
    assert purge.deleted == {"dead_letters": 250, "audit_log": 120} and purge.runs == 2
    # One statement deletes at most a chunk, so no transaction holds the write lock long.
    plant(store, letters={40: 150}, audits={})
    assert store.purge("dead_letters", NOW - 30 * DAY, 100) == 100
    assert store.purge("dead_letters", NOW - 30 * DAY, 100) == 50
    with pytest.raises(ValueError, match="unknown table 'packets'"):
        store.purge("packets", NOW, 10)


def test_zero_or_null_keeps_rows_forever(store: Store, hub_db_url: str) -> None:
    plant(store, letters={400: 2}, audits={400: 2})
    keep = Retention(config(hub_db_url, "retention: {dead_letters_days: 0, audit_days: null}"),
                     store)
    assert keep.limits() == {}
    assert keep.purge(now=NOW) == {}
    assert ages(store) == ([400, 400], [400, 400])
    only_audit = Retention(config(hub_db_url, "retention: {dead_letters_days: 0}"), store)
    assert only_audit.purge(now=NOW) == {"audit_log": 2}
    assert ages(store) == ([400, 400], [])


def test_one_worker_purges_at_a_time(store: Store, hub_db_url: str) -> None:
    plant(store, letters={40: 3}, audits={})
    first, second = (Retention(config(hub_db_url), store) for _ in range(2))
    assert store.try_lease(retention_module.LEASE, first.holder, 60)
    assert second.purge(now=NOW) == {"dead_letters": 0, "audit_log": 0}
    assert ages(store)[0] == [40, 40, 40]
    assert first.purge(now=NOW)["dead_letters"] == 3


@pytest.mark.timeout(60)
def test_the_purge_is_scheduled_on_the_loop_and_stops_with_the_hub(
        store: Store, hub_db_url: str) -> None:
    plant(store, letters={31: 5, 2: 1}, audits={91: 5, 2: 1})
    purge = Retention(config(hub_db_url, "retention: {interval_s: 0.1}"), store)

    async def scenario() -> None:
        stop = asyncio.Event()
        supervisor = Supervisor(stop)
        task = asyncio.create_task(purge.run(stop, supervisor))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while purge.runs < 3:  # the first run at start, then every interval
            assert loop.time() < deadline, "the purge did not run three times"
            assert not task.done(), task
            await asyncio.sleep(0.01)
        # Rows that age meanwhile go at a later run.
        plant(store, letters={35: 2}, audits={})
        later = purge.runs
        while purge.runs < later + 2:
            assert loop.time() < deadline, "the purge did not run again"
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 10)
        assert supervisor.failures["retention"] == 0

    asyncio.run(scenario())
    assert ages(store) == ([2], [2])
    assert purge.deleted == {"dead_letters": 7, "audit_log": 5}
    # The lease was given back at the stop: another worker can purge at once.
    other = Retention(config(hub_db_url), store)
    assert store.try_lease(retention_module.LEASE, other.holder, 60)
