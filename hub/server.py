"""The API served by uvicorn on the hub's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from hub.api import ApiContext, create_app
from hub.config import ApiSection

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The hub owns SIGINT/SIGTERM (it stops ingest, fan-out and the API together);
        # uvicorn's own handlers would re-raise the signal after serving.
        yield


def uvicorn_config(app: FastAPI, config: ApiSection) -> uvicorn.Config:
    """How uvicorn serves the API. `X-Forwarded-For` is believed only from `trusted_proxies`
    (uvicorn would trust 127.0.0.1 by default): otherwise the client is the socket peer."""
    proxies = config.trusted_proxies
    return uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                          proxy_headers=bool(proxies),
                          forwarded_allow_ips=list(proxies) if proxies else [])


class ApiServer:
    """Binds first (so the port is known, and a taken port is reported), then serves."""

    def __init__(self, config: ApiSection, context: ApiContext) -> None:
        self.config = config
        self.context = context
        self.port: int | None = None
        self._socket: socket.socket | None = None
        self._server: _Server | None = None
        self._app: FastAPI | None = None

    async def start(self) -> bool:
        """Bind the listening socket; False (logged at ERROR) when the address is taken.

        The hub keeps ingesting without its API then: edges' outboxes must not fill because a
        port is busy.
        """
        sock = socket.socket(socket.AF_INET6 if ":" in self.config.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.config.host, self.config.port))
        except OSError as error:
            sock.close()
            log.error("hub API not served: cannot bind %s:%s (%s)",
                      self.config.host, self.config.port, error.strerror)
            return False
        sock.listen(128)
        sock.setblocking(False)
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        self._app = app = create_app(self.context)
        self._server = _Server(uvicorn_config(app, self.config))
        log.info("hub API listening", extra={"host": self.config.host, "port": self.port})
        return True

    async def run(self, stop: asyncio.Event) -> None:
        assert self._server is not None and self._socket is not None and self._app is not None
        server = self._server
        serving = asyncio.create_task(server.serve(sockets=[self._socket]))
        await stop.wait()
        server.should_exit = True
        # Open SSE streams end at their next poll; do not wait on them for long.
        try:
            await asyncio.wait_for(asyncio.shield(serving), 5.0)
        except TimeoutError:
            server.force_exit = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(serving, 5.0)
        # A forced exit skips the lifespan's shutdown: write the last audit rows here too.
        await self._app.state.audit.close()
        self._socket.close()
