"""A TCP port per node for desktop VNC clients, piped to QEMU's VNC unix socket.

QEMU's VNC server (``-vnc unix:NODE/vnc.sock``) accepts any number of clients, so unlike the
serial console there is no hub: every client (TCP here, WebSocket in
:func:`virtlab.consoles.websocket.serve_vnc`) gets a connection of its own and the bytes are
passed through untouched; QEMU speaks RFB to each.

Sharing: with QEMU's default ``share=allow-exclusive`` a client that asks for an exclusive
session (RFB ClientInit shared-flag 0, e.g. TigerVNC's viewer without ``-Shared``) makes QEMU
drop every other client, the browser's noVNC included. Start nodes with
``-vnc unix:NODE/vnc.sock,share=force-shared`` so that such a request is ignored; the proxy
does not rewrite the RFB handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from virtlab.consoles.hub import ConsoleUnavailable, first_completed

__all__ = ["VncTcpProxy", "open_vnc", "pipe"]

log = logging.getLogger(__name__)
_CHUNK = 256 * 1024


async def open_vnc(vnc_socket: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A new connection to QEMU's VNC unix socket; :class:`ConsoleUnavailable` if it refuses."""
    try:
        return await asyncio.open_unix_connection(vnc_socket)
    except OSError as exc:
        raise ConsoleUnavailable(
            f"cannot connect to the VNC console at {vnc_socket}: {exc.strerror or exc}; "
            "is the node running?",
            Path(vnc_socket),
        ) from exc


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until end of file (or an error on either side)."""
    with contextlib.suppress(OSError):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


class VncTcpProxy:
    """Listens on ``host:port`` (``port=0``: a free one) and pipes each connection to a new
    connection to ``vnc_socket``."""

    def __init__(self, vnc_socket: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.vnc_socket = Path(vnc_socket)
        self.host = host
        self._requested_port = port
        self._server: asyncio.Server | None = None
        self._port = 0
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the VNC proxy is not started")
        return self._port

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the VNC proxy is already started")
        self._server = await asyncio.start_server(
            self._serve, self.host, self._requested_port, reuse_address=True
        )
        self._port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and close every connection (QEMU goes on)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> VncTcpProxy:
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
            try:
                vnc_reader, vnc_writer = await open_vnc(self.vnc_socket)
            except ConsoleUnavailable as exc:
                log.info("VNC client %s refused: %s", writer.get_extra_info("peername"), exc)
                return
            try:
                await first_completed(pipe(reader, vnc_writer), pipe(vnc_reader, writer))
            finally:
                await close_writer(vnc_writer)
        except asyncio.CancelledError:  # stop(): the connection ends, the task ends quietly
            pass
        finally:
            self._connections.discard(task)
            await close_writer(writer)
