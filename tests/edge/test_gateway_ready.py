"""/api/ready with its reasons, /api/status's state, the log level at run time, and no debug
route unless a test asks for it. Real uvicorn, real HTTP."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest
from test_gateway_api import running

from common.logs import set_level
from gateway.api import TEST_HOOKS_ENV, stop_local_api


def test_ready_status_and_log_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TEST_HOOKS_ENV, raising=False)
    before = logging.getLogger().level

    async def main() -> None:
        gateway, served = await running(tmp_path)
        url = f"http://127.0.0.1:{gateway.api_port}"
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                ready = await client.get(url + "/api/ready")
                assert ready.status_code == 503
                assert ready.json() == {"ready": False, "reasons": [
                    "outbox not open", "drivers not started", "broker not connected"]}
                status = (await client.get(url + "/api/status")).json()
                assert status["state"] == "0/0 devices up, 0 pending, hub acked 0, broker down"
                assert status["pending_at_start"] is None
                level = await client.put(url + "/api/log-level", params={"level": "debug"})
                assert level.json() == {"level": "DEBUG"}
                assert logging.getLogger().level == logging.DEBUG
                bad = await client.put(url + "/api/log-level", params={"level": "LOUD"})
                assert bad.status_code == 422 and "LOUD" in bad.json()["detail"]
                blocked = await client.post(url + "/api/debug/block-loop",
                                            params={"seconds": 1})
                assert blocked.status_code == 404  # only with KEYOP_TEST_HOOKS=1
        finally:
            await stop_local_api(served)

    try:
        asyncio.run(main())
    finally:
        set_level(before)
