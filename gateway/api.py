"""The gateway's local HTTP API: health, status, Prometheus metrics, the running mapping and
its reload.

Bound to 127.0.0.1 unless configured otherwise. Served by uvicorn inside the gateway's own
event loop; the socket is bound here first so a port in use is a logged error, not an exit.

Every route, /metrics and /api/health included, refuses with 403 a request whose `Host` is
not a loopback name or address, the bound address or one of `api.allowed_hosts` (DNS
rebinding), or which carries an `Origin` naming any other host (a web page open in a browser
on this machine can neither read the API nor POST a reload). With `api.token_file`, every
request must also carry `Authorization: Bearer <token>` (401 otherwise).
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from common.http_server import EmbeddedServer, listen
from common.logs import set_level
from gateway import service
from gateway.config import CredentialsError, is_loopback, read_api_token
from gateway.control import MappingControl
from gateway.metrics import registry_for

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger(__name__)

TEST_HOOKS_ENV = "KEYOP_TEST_HOOKS"
"""Set to 1 (tests only) to serve the debug routes; never set it on a box."""


def create_app(gateway: Gateway, control: MappingControl, token: str | None = None) -> FastAPI:
    """The API of one gateway; `token`, when given, is required on every request."""
    app = FastAPI(title="keyop gateway", version="0.1.0")

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        """Liveness: the process and its event loop answer."""
        uplink = gateway.uplink
        return {
            "status": "ok",
            "source": gateway.config.source,
            "uptime_s": service.uptime_s(gateway),
            "broker_connected": bool(uplink and uplink.connected),
        }

    @app.get("/api/ready")
    async def ready() -> JSONResponse:
        """Readiness: outbox open, drivers started, broker connected; 503 with the reasons."""
        reasons = service.not_ready(gateway)
        return JSONResponse({"ready": not reasons, "reasons": reasons},
                            status_code=503 if reasons else 200)

    @app.get("/api/status")
    async def status() -> dict[str, Any]:
        pipeline, uplink = gateway.pipeline, gateway.uplink
        backlog = gateway.backlog_at_start
        return {
            "source": gateway.config.source,
            "state": service.status_line(gateway),
            "pending": service.pending(gateway),
            "pending_at_start": backlog.as_json() if backlog else None,
            "devices_up": service.devices_up(gateway),
            "pipeline": asdict(pipeline.stats) if pipeline else None,
            "uplink": {
                "connected": uplink.connected, "acked_seq": uplink.acked_seq,
                "sent_upto": uplink.sent_upto, "resends": uplink.resends,
                "reconnects": uplink.reconnects,
            } if uplink else None,
            "drivers": [driver.name for driver in gateway.drivers],
            "devices": [{"name": driver.name, "up": bool(gateway.device_up.get(driver.name)),
                         "fault": gateway.device_fault.get(driver.name)}
                        for driver in gateway.drivers],
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

    @app.put("/api/log-level")
    async def log_level(level: str) -> JSONResponse:
        """`PUT /api/log-level?level=DEBUG`: the level of the running daemon."""
        try:
            value = set_level(level)
        except ValueError as error:
            return JSONResponse({"detail": str(error)}, status_code=422)
        return JSONResponse({"level": logging.getLevelName(value)})

    if os.environ.get(TEST_HOOKS_ENV) == "1":
        @app.post("/api/debug/block-loop")
        async def block_loop(seconds: float) -> dict[str, float]:
            """Test hook only: block the event loop (the watchdog must stop pinging)."""
            time.sleep(min(seconds, 60.0))  # noqa: ASYNC251 (blocking is the point)
            return {"blocked_s": seconds}

    settings = gateway.config.settings.api
    app.add_middleware(LocalGuard, hosts=allowed_hosts(settings.host, settings.allowed_hosts),
                       token=token)
    return app


def allowed_hosts(bound: str, configured: Iterable[str]) -> frozenset[str]:
    """The names a request may give in `Host`/`Origin` besides loopback ones: the bound address
    (unless it is a wildcard) and the configured names, lowercase."""
    names = {name.lower().strip("[]") for name in configured}
    if bound not in ("0.0.0.0", "::", ""):
        names.add(bound.lower().strip("[]"))
    return frozenset(names)


def _host_of(value: str) -> str:
    """`example:8471` -> `example`; `[::1]:8471` -> `::1`."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


class LocalGuard:
    """Refuses requests by `Host`, `Origin` and bearer token before any route runs."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str], token: str | None) -> None:
        self.app = app
        self.hosts = hosts
        self.token = token.encode() if token is not None else None

    def _allowed(self, host: str) -> bool:
        return bool(host) and (host in self.hosts or is_loopback(host))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal: tuple[int, str] | None = None
        origin = headers.get("origin")
        if not self._allowed(_host_of(headers.get("host", ""))):
            refusal = (403, "Host: not a name of this gateway's API (api.allowed_hosts)")
        elif origin is not None and not self._allowed(urlsplit(origin).hostname or ""):
            refusal = (403, "Origin: requests from other sites are refused")
        elif self.token is not None and not self._token_ok(headers.get("authorization", "")):
            refusal = (401, "Authorization: Bearer <api.token_file token> required")
        if refusal is not None:
            extra = {"WWW-Authenticate": "Bearer"} if refusal[0] == 401 else None
            await JSONResponse({"detail": refusal[1]}, status_code=refusal[0],
                               headers=extra)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _token_ok(self, authorization: str) -> bool:
        assert self.token is not None
        scheme, _, given = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self.token)


class LocalApi:
    def __init__(self, server: EmbeddedServer | None) -> None:
        self.server = server


def start_local_api(gateway: Gateway) -> LocalApi:
    settings = gateway.config.settings.api
    if not settings.enabled:
        return LocalApi(None)
    try:
        sock = listen(settings.host, settings.port)
    except OSError as error:
        log.error("local API not started: cannot bind", extra={
            "host": settings.host, "port": settings.port, "error": str(error)})
        return LocalApi(None)
    try:
        token = read_api_token(gateway.config)
    except CredentialsError as error:
        sock.close()
        log.error("local API not started: %s", error)
        return LocalApi(None)
    # No proxy in front of this API: X-Forwarded-For is never believed.
    config = uvicorn.Config(create_app(gateway, gateway.control, token), log_level="warning",
                            access_log=False, lifespan="off", proxy_headers=False)
    server = EmbeddedServer(sock, config)
    server.start("local-api")
    log.info("local API listening", extra={"host": settings.host, "port": server.port})
    gateway.api_port = server.port
    return LocalApi(server)


async def stop_local_api(api: LocalApi) -> None:
    if api.server is not None:
        await api.server.stop()
