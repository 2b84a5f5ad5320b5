"""The API served by uvicorn on the hub's own event loop."""

from __future__ import annotations

import asyncio
import logging

import uvicorn
from fastapi import FastAPI

from common.http_server import EmbeddedServer, listen
from hub.api import ApiContext, create_app
from hub.config import ApiSection

log = logging.getLogger(__name__)


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
        self._server: EmbeddedServer | None = None
        self._app: FastAPI | None = None

    async def start(self) -> bool:
        """Bind the listening socket; False (logged at ERROR) when the address is taken.

        The hub keeps ingesting without its API then: edges' outboxes must not fill because a
        port is busy.
        """
        try:
            sock = listen(self.config.host, self.config.port)
        except OSError as error:
            log.error("hub API not served: cannot bind %s:%s (%s)",
                      self.config.host, self.config.port, error.strerror)
            return False
        self._app = app = create_app(self.context)
        self._server = EmbeddedServer(sock, uvicorn_config(app, self.config))
        self.port = self._server.port
        log.info("hub API listening", extra={"host": self.config.host, "port": self.port})
        return True

    async def run(self, stop: asyncio.Event) -> None:
        assert self._server is not None and self._app is not None
        self._server.start("hub-api")
        await stop.wait()
        # Open SSE streams end at their next poll; the stop does not wait on them for long.
        await self._server.stop()
        # A forced exit skips the lifespan's shutdown: write the last audit rows here too.
        await self._app.state.audit.close()
