"""The gateway's local HTTP API: health, status, Prometheus metrics, the running mapping and
its reload.

Bound to 127.0.0.1 unless configured otherwise. Served by uvicorn inside the gateway's own
event loop; the socket is bound here first so a port in use is a logged error, not an exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.control import MappingControl
from gateway.metrics import registry_for

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger(__name__)


def create_app(gateway: Gateway, control: MappingControl) -> FastAPI:
    app = FastAPI(title="keyop gateway", version="0.1.0")

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        uplink = gateway.uplink
        return {
            "status": "ok",
            "source": gateway.config.source,
            "uptime_s": round(time.time() - gateway.started_at, 1),
            "broker_connected": bool(uplink and uplink.connected),
        }

    @app.get("/api/status")
    async def status() -> dict[str, Any]:
        pipeline, uplink = gateway.pipeline, gateway.uplink
        return {
            "source": gateway.config.source,
            "pipeline": asdict(pipeline.stats) if pipeline else None,
            "uplink": {
                "connected": uplink.connected, "acked_seq": uplink.acked_seq,
                "sent_upto": uplink.sent_upto, "resends": uplink.resends,
                "reconnects": uplink.reconnects,
            } if uplink else None,
            "drivers": [driver.name for driver in gateway.drivers],
        }

    registry = registry_for(gateway)

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def metrics() -> Response:
        # In memory only (no database read): cheap enough to answer on the loop.
        return Response(content=generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/mapping")
    async def mapping() -> dict[str, Any]:
        return control.describe()

    @app.post("/api/mapping/reload")
    async def reload() -> JSONResponse:
        result = await control.reload()
        return JSONResponse(result.as_json(), status_code=200 if result.ok else 422)

    return app


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside the gateway's loop: the gateway handles SIGINT/SIGTERM itself, so the
    server must not replace those handlers (it would swallow the gateway's stop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class LocalApi:
    def __init__(self, server: _EmbeddedServer | None, task: asyncio.Task[None] | None) -> None:
        self.server = server
        self.task = task


def start_local_api(gateway: Gateway) -> LocalApi:
    settings = gateway.config.settings.api
    if not settings.enabled:
        return LocalApi(None, None)
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as error:
        sock.close()
        log.error("local API not started: cannot bind", extra={
            "host": settings.host, "port": settings.port, "error": str(error)})
        return LocalApi(None, None)
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(create_app(gateway, gateway.control), log_level="warning",
                            access_log=False, lifespan="off")
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="local-api")
    log.info("local API listening", extra={"host": settings.host, "port": port})
    gateway.api_port = port
    return LocalApi(server, task)


async def stop_local_api(api: LocalApi) -> None:
    if api.server is None or api.task is None:
        return
    api.server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        await asyncio.wait_for(api.task, 5)
