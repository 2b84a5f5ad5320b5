"""`keyop run` as a supervised service: the notify protocol, SIGTERM with a backlog the hub is
not acknowledging, a second SIGTERM, a blocked loop. Real processes, Mosquitto and hub."""

from __future__ import annotations

import asyncio
import itertools
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from factories import outbox_entry

from devstack.notify import NotifyListener
from devstack.stack import SOURCE, Stack, wait_hub_online
from edge_store import Outbox
from hub.store import Store

pytestmark = pytest.mark.slow

BACKLOG = 10_000
STOP_TIMEOUT_S = 3.0


def _pending(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
        return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])


def _set_stop_timeout(stack: Stack, value: str) -> None:
    path = stack.workdir / "gateway.yaml"
    config = yaml.safe_load(path.read_text())
    config["service"] = {"stop_timeout": value}
    path.write_text(yaml.safe_dump(config))


def _sigterm(process: subprocess.Popen[bytes], times: int = 1,
             timeout: float = 30.0) -> tuple[int, float]:
    """Signal the process, `times` SIGTERMs 0.3 s apart; (exit code, seconds to exit)."""
    started = time.monotonic()
    for n in range(times):
        if n:
            time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
    code = process.wait(timeout)
    return code, time.monotonic() - started


def _notify(stack: Stack, path: Path, **extra: str) -> NotifyListener:
    listener = NotifyListener(str(path))
    stack.gateway_env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "1000000",
                         **extra}
    return listener


async def _prepared(tmp_path: Path) -> Stack:
    stack = Stack(tmp_path / "stack", log_level="INFO")
    await stack.prepare()
    return stack


def test_sigterm_with_10000_pending_and_no_hub_ack_exits_in_time_losing_nothing(
        tmp_path: Path) -> None:
    async def main() -> None:
        stack = await _prepared(tmp_path)
        listener = _notify(stack, tmp_path / "notify")
        try:
            _set_stop_timeout(stack, f"{STOP_TIMEOUT_S}s")
            # A power cut left 10,000 packets behind; no hub is acknowledging.
            with Outbox(stack.outbox_path, SOURCE) as outbox:
                outbox.append([outbox_entry() for _ in range(BACKLOG)])
            stack.start_gateway()
            await asyncio.to_thread(listener.wait_for, "READY", "", 30)
            ready_status = listener.lines("STATUS")[0][1]
            assert f"{BACKLOG:,} pending at start since 20" in ready_status, ready_status
            async with httpx.AsyncClient() as client:
                status = (await client.get(
                    f"http://127.0.0.1:{stack.api_port}/api/status")).json()
                assert status["pending_at_start"]["pending"] == BACKLOG, status
                assert status["pending_at_start"]["oldest"].startswith("20"), status
                await stack.wait_polled()
                await asyncio.to_thread(listener.wait_for, "STATUS", "broker connected", 15)
                ready = await client.get(f"http://127.0.0.1:{stack.api_port}/api/ready")
                assert ready.json() == {"ready": True, "reasons": []}, ready.text
            await asyncio.sleep(1.2)  # watchdog pings every 0.5 s
            assert stack.gateway is not None
            code, took = await asyncio.to_thread(_sigterm, stack.gateway)
            stack.gateway = None
            assert code == 0, (tmp_path / "stack" / "gateway.log").read_text()[-3000:]
            # It waited for the acks that never came, then left (the drain is bounded).
            assert STOP_TIMEOUT_S - 0.5 <= took <= STOP_TIMEOUT_S + 4.0, took
            assert len(listener.lines("WATCHDOG")) >= 2
            assert listener.wait_for("STOPPING", "", 1) == "1"
            with Outbox(stack.outbox_path, SOURCE) as outbox:
                emitted = outbox.last_seq
            # Nothing was acknowledged, so nothing left the outbox.
            assert _pending(stack.outbox_path) == emitted >= BACKLOG

            # A second SIGTERM ends a long graceful stop at once.
            _set_stop_timeout(stack, "60s")
            listener.close()
            listener = _notify(stack, tmp_path / "notify-2")
            stack.start_gateway()
            await asyncio.to_thread(listener.wait_for, "STATUS", "broker connected", 30)
            assert stack.gateway is not None
            code, took = await asyncio.to_thread(_sigterm, stack.gateway, 2)
            stack.gateway = None
            assert code == 0 and took < 5.0, took
            with Outbox(stack.outbox_path, SOURCE) as outbox:
                emitted = outbox.last_seq
            assert _pending(stack.outbox_path) == emitted

            # With a hub, everything arrives after the restart.
            stack.start_hub()
            await asyncio.to_thread(wait_hub_online, stack.host, stack.port)
            stack.start_gateway()
            deadline = time.monotonic() + 60
            while _pending(stack.outbox_path) > 0:
                assert time.monotonic() < deadline, _pending(stack.outbox_path)
                await asyncio.sleep(0.2)
            assert stack.stop_gateway() == 0
            assert stack.stop_hub() == 0
            with Outbox(stack.outbox_path, SOURCE) as outbox:
                emitted = outbox.last_seq
            store = Store(stack.hub_db_url)
            try:
                assert store.count_packets() == emitted
            finally:
                store.close()
        finally:
            await stack.close()
            listener.close()

    asyncio.run(main())


def test_a_blocked_event_loop_stops_the_watchdog_pings(tmp_path: Path) -> None:
    async def main() -> None:
        stack = await _prepared(tmp_path)
        listener = _notify(stack, tmp_path / "notify", KEYOP_TEST_HOOKS="1")
        try:
            stack.start_gateway()
            await asyncio.to_thread(listener.wait_for, "READY", "", 30)
            await asyncio.sleep(1.5)
            async with httpx.AsyncClient(timeout=10) as client:
                blocked = await client.post(
                    f"http://127.0.0.1:{stack.api_port}/api/debug/block-loop",
                    params={"seconds": 2.5})
            assert blocked.status_code == 200
            await asyncio.sleep(1.5)
            pings = [at for at, _ in listener.lines("WATCHDOG")]
            gaps = [b - a for a, b in itertools.pairwise(pings)]
            assert max(gaps) >= 2.4, gaps  # systemd (WatchdogSec=1) would have restarted it
            assert sorted(gaps)[-2] < 1.5, gaps  # otherwise every 0.5 s (a loaded box lags)
        finally:
            await stack.close()
            listener.close()

    asyncio.run(main())
