"""A TCP port serving one node's console to any number of clients: the part telnet and the VNC
proxy share (listening, tracking connections, closing them all on stop)."""

from __future__ import annotations

import abc
import asyncio
import contextlib
from typing import Self

__all__ = ["TcpConsolePort"]


class TcpConsolePort(abc.ABC):
    """``port=0`` picks a free port; :attr:`port` tells which after :meth:`start`."""

    what = "console port"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._requested_port = port
        self._server: asyncio.Server | None = None
        self._port = 0
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"the {self.what} is not started")
        return self._port

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError(f"the {self.what} is already started")
        self._server = await asyncio.start_server(
            self._serve, self.host, self._requested_port, reuse_address=True
        )
        self._port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and close every connection (the node goes on)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._server is None or not self._server.is_serving():  # stopped meanwhile
            writer.close()
            return
        self._connections.add(task)
        try:
            await self.handle(reader, writer)
        except asyncio.CancelledError:  # stop(): the connection ends, the task ends quietly
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    @abc.abstractmethod
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one client until either side is done."""
