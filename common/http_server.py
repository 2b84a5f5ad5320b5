"""uvicorn embedded in a daemon's own event loop.

The socket is bound before anything is served, so a taken port is an `OSError` the daemon logs
(and carries on without its API), not an exit. The daemon owns SIGINT/SIGTERM: uvicorn's own
handlers would swallow the daemon's stop and re-raise the signal after serving. Stopping is
bounded: open streams get a grace period, then the server is forced.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn

# Each stage of a stop waits at most this long: the graceful one (open requests and streams
# finish), then the forced one (connections are closed).
STOP_STAGE_S = 5.0


def listen(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A listening TCP socket on `host:port` (port 0: a free one); `OSError` when taken."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The daemon stops everything together on its own signal handlers.
        yield


class EmbeddedServer:
    """One uvicorn server on a bound socket, run as a task of the running loop."""

    def __init__(self, sock: socket.socket, config: uvicorn.Config) -> None:
        self.socket = sock
        self.port = int(sock.getsockname()[1])
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        """Whether uvicorn has started serving (its startup, lifespan included, is done)."""
        return self._server.started

    def start(self, name: str) -> None:
        """Serve from now on, as a task named `name` of the running loop."""
        self._task = asyncio.create_task(self._server.serve(sockets=[self.socket]), name=name)

    async def stop(self) -> None:
        """Stop serving, within two `STOP_STAGE_S` stages, and close the socket."""
        task = self._task
        if task is not None and not task.done():
            self._server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(task), STOP_STAGE_S)
            except TimeoutError:
                self._server.force_exit = True
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(task, STOP_STAGE_S)
        self.socket.close()
