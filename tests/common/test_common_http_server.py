"""The embedded uvicorn of both daemons: bound first, served on the caller's loop, stopped in
bounded time."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from common.http_server import EmbeddedServer, listen


def test_a_taken_port_is_an_oserror_not_an_exit() -> None:
    taken = listen("127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            listen("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


def test_serves_on_the_running_loop_and_leaves_the_signal_handlers_alone() -> None:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    async def main() -> None:
        handler = signal.getsignal(signal.SIGTERM)
        server = EmbeddedServer(listen("127.0.0.1", 0),
                                uvicorn.Config(app, log_level="warning", lifespan="off"))
        server.start("test-api")
        deadline = asyncio.get_running_loop().time() + 10
        while not server.started:
            assert asyncio.get_running_loop().time() < deadline, "server did not start"
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"http://127.0.0.1:{server.port}/ping")
        assert answer.json() == {"ok": True}
        assert signal.getsignal(signal.SIGTERM) is handler
        await asyncio.wait_for(server.stop(), 12)
        assert server.socket.fileno() == -1

    asyncio.run(main())
