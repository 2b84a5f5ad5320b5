"""A TCP relay in front of a simulator, whose `cut` switch makes every connection half-open.

While `cut` is set the relay keeps the sockets open but forwards nothing in either direction:
to the gateway the device looks like a PLC behind a pulled cable or a crashed switch (no FIN,
no RST, just silence), which only timeouts and keep-alives can detect. New connections are
accepted and stay silent too. Clearing `cut` lets data through again.
"""

from __future__ import annotations

import asyncio
import contextlib


class TcpRelay:
    """`await TcpRelay(target_port).start()` listens on a free loopback port (`port`)."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        #: While True, bytes are dropped in both directions (sockets stay open).
        self.cut = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> TcpRelay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                if not self.cut:
                    sink.write(data)
                    await sink.drain()
        sink.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
