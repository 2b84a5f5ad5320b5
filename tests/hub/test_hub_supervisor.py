"""The hub's supervisor: a task that fails is logged once, restarted with backoff and counted;
it recovers; stopping and cancelling are not failures; a fatal error still ends the hub. Then
the real hub with a real Mosquitto: its fan-out and alerts lose their lease table for a while,
are restarted (counted in /metrics) while ingest goes on, and fan out again once it is back."""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from hubkit import (
    GATEWAY,
    Client,
    RunningHub,
    acked,
    events_by_id,
    hub_config,
    make_event,
    metric,
    wait_until,
)

from devstack.mosquitto import PrivateBroker
from hub.config import HubConfigError
from hub.supervisor import Backoff, Supervisor
from sync import topics

FAST = Backoff(initial_s=0.01, max_s=0.02)


async def until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Poll a condition on the loop with a bound; fail naming it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "hub.supervisor" and r.levelno == level]


def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = Backoff(initial_s=0.5, max_s=30.0, jitter=0.5)
    rng = random.Random(7)
    for failures, base in ((1, 0.5), (2, 1.0), (3, 2.0), (7, 30.0), (500, 30.0)):
        delays = [policy.delay(failures, rng) for _ in range(200)]
        assert all(base * 0.5 <= d <= base for d in delays), (failures, min(delays))
        assert max(delays) - min(delays) > base * 0.3  # jittered, not one fixed value


def test_a_failing_task_is_logged_once_restarted_and_recovers(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="hub.supervisor")
    runs = 0

    async def scenario() -> None:
        nonlocal runs
        stop = asyncio.Event()
        supervisor = Supervisor(stop, backoff=FAST, healthy_after_s=0.05)

        async def flaky() -> None:
            nonlocal runs
            runs += 1
            if runs <= 4:
                raise RuntimeError(f"run {runs} failed")  # the same way each time
            await stop.wait()

        async def steady() -> None:
            await stop.wait()

        supervisor.spawn("flaky", flaky)
        supervisor.spawn("steady", steady)
        await until(lambda: runs == 5, "the fifth run")
        assert supervisor.restarts == {"flaky": 4, "steady": 0}
        assert supervisor.failures["flaky"] == 4 and supervisor.failing("flaky")
        await until(lambda: not supervisor.failing("flaky"), "recovery")
        stop.set()
        await asyncio.wait_for(supervisor.wait(), 5)
        assert supervisor.names == ["flaky", "steady"]
        assert supervisor.failures == {"flaky": 4, "steady": 0}

    asyncio.run(scenario())
    errors = records(caplog, logging.ERROR)
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "hub task flaky failed; restarting in" in errors[0].getMessage()
    assert errors[0].exc_info is not None and "run 1 failed" in caplog.text  # its traceback
    assert len(records(caplog, logging.DEBUG)) == 3  # the repeats, quietly
    assert [r.getMessage() for r in records(caplog, logging.INFO)] == [
        "hub task flaky recovered"]


def test_a_different_failure_is_logged_again(caplog: pytest.LogCaptureFixture) -> None:
    runs = 0

    async def scenario() -> None:
        nonlocal runs
        stop = asyncio.Event()
        supervisor = Supervisor(stop, backoff=FAST, healthy_after_s=5.0)

        async def changing() -> None:
            nonlocal runs
            runs += 1
            if runs == 1:
                raise RuntimeError("first way")
            if runs == 2:
                raise KeyError("second way")
            await stop.wait()

        supervisor.spawn("changing", changing)
        await until(lambda: runs == 3, "the third run")
        stop.set()
        await supervisor.wait()

    asyncio.run(scenario())
    assert len(records(caplog, logging.ERROR)) == 2


def test_stop_and_cancellation_are_not_failures(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        supervisor = Supervisor(stop, backoff=FAST)
        finished: list[str] = []

        async def polite() -> None:
            await stop.wait()
            finished.append("polite")

        async def deaf() -> None:
            await asyncio.Event().wait()  # ignores stop: cancelled after the grace time

        supervisor.spawn("polite", polite)
        supervisor.spawn("deaf", deaf)
        await asyncio.sleep(0)
        await asyncio.wait_for(supervisor.close(grace_s=0.05), 5)
        assert stop.is_set() and finished == ["polite"]
        await supervisor.wait()
        assert supervisor.failures == {"polite": 0, "deaf": 0}
        assert supervisor.restarts == {"polite": 0, "deaf": 0}

    asyncio.run(scenario())
    assert not records(caplog, logging.ERROR)


def test_a_fatal_error_stops_every_task_and_is_raised() -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        supervisor = Supervisor(stop, backoff=FAST, fatal=(HubConfigError,))

        async def refuses() -> None:
            raise HubConfigError("client id keyop-hub-1 is held by another hub process")

        async def other() -> None:
            await stop.wait()

        supervisor.spawn("identity", refuses)
        supervisor.spawn("other", other)
        with pytest.raises(HubConfigError, match="held by another"):
            await asyncio.wait_for(supervisor.wait(), 5)
        assert stop.is_set()
        assert supervisor.restarts["identity"] == 0

    asyncio.run(scenario())


def test_a_scheduled_job_failure_is_counted_and_the_next_run_recovers(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hub.supervisor")

    async def scenario() -> None:
        supervisor = Supervisor(asyncio.Event())

        async def broken() -> int:
            raise OSError("disk gone")

        async def fine() -> int:
            return 7

        assert await supervisor.once("purge", broken) is None
        assert await supervisor.once("purge", broken) is None
        assert supervisor.failing("purge") and supervisor.failures["purge"] == 2
        assert await supervisor.once("purge", fine) == 7
        assert not supervisor.failing("purge") and supervisor.restarts["purge"] == 0

    asyncio.run(scenario())
    assert len(records(caplog, logging.ERROR)) == 1
    assert [r.getMessage() for r in records(caplog, logging.INFO)] == [
        "hub task purge recovered"]


@pytest.mark.timeout(120)
def test_the_hub_restarts_tasks_that_lose_their_table_and_keeps_ingesting(
    broker: PrivateBroker, hub_db_url: str, clients: dict[str, Client],
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    admin_key = secrets.token_urlsafe(32)
    (tmp_path / "admin.key").write_text(admin_key)
    config = hub_config(broker, hub_db_url)
    config = config.model_copy(update={
        "api": config.api.model_copy(update={"admin_key_file": str(tmp_path / "admin.key")}),
        "alerts": config.alerts.model_copy(update={"interval_s": 0.2})})
    edge, acme = clients["edge"], clients["acme"]
    up = topics.up_events(GATEWAY)
    hub = RunningHub(config, broker)
    engine = sa.create_engine(hub_db_url)
    try:
        edge.publish(up, make_event(1))
        wait_until(lambda: len(events_by_id(acme)) == 1, "event 1 at acme")
        supervisor = hub.service.supervisor
        assert supervisor is not None
        with engine.begin() as conn:  # the fan-out and alerts leases' table goes away
            conn.execute(sa.text("ALTER TABLE leases RENAME TO leases_away"))
        # The fan-out task is restarted; the alerts job fails and runs again at its next time.
        wait_until(lambda: supervisor.restarts["fanout"] >= 1
                   and supervisor.failures["alerts"] >= 2, "fan-out restarted, alerts retried",
                   timeout=30)
        # Ingest does not depend on them: stored and acknowledged meanwhile.
        edge.publish(up, make_event(2))
        wait_until(lambda: acked(edge)[-1:] == [2], "ack of seq 2")
        assert len(events_by_id(acme)) == 1
        url = f"http://127.0.0.1:{hub.service.api.port if hub.service.api else 0}/metrics"
        text = httpx.get(url, headers={"Authorization": f"Bearer {admin_key}"},
                         timeout=10).text
        assert metric(text, "keyop_hub_task_restarts_total", hub="hub", task="fanout") >= 1
        assert metric(text, "keyop_hub_task_failing", hub="hub", task="fanout") == 1
        assert metric(text, "keyop_hub_task_restarts_total", hub="hub", task="ingest") == 0
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE leases_away RENAME TO leases"))
        wait_until(lambda: len(events_by_id(acme)) == 2, "event 2 at acme after the restart",
                   timeout=60)
    finally:
        engine.dispose()
        hub.close()
    errors = [r for r in caplog.records if r.name == "hub.supervisor"
              and r.levelno == logging.ERROR]
    # Each task's failure logged once with its traceback, however often it was restarted.
    assert sorted(r.getMessage().split(";")[0] for r in errors) == [
        "hub task alerts failed", "hub task fanout failed"]
    assert all(r.exc_info is not None for r in errors)
