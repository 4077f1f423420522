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

Tickets: given a node's tickets (a console host beyond loopback), the proxy answers the
client's handshake itself with VNC Authentication and lets it through to QEMU only with a
live VNC ticket of that node (:mod:`virtlab.consoles.rfb_auth`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from virtlab.auth.tickets import NodeTickets
from virtlab.consoles import rfb_auth
from virtlab.consoles.hub import ConsoleUnavailable, first_completed
from virtlab.consoles.tcp import TcpConsolePort

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


class VncTcpProxy(TcpConsolePort):
    """Listens on ``host:port`` (``port=0``: a free one) and pipes each connection to a new
    connection to ``vnc_socket``."""

    what = "VNC proxy"

    def __init__(
        self, vnc_socket: Path, host: str = "127.0.0.1", port: int = 0,
        tickets: NodeTickets | None = None,
    ) -> None:  # fmt: skip
        super().__init__(host, port)
        self.vnc_socket = Path(vnc_socket)
        self.tickets = tickets  # None: no ticket asked (a loopback port), bytes pass through

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client_init = None
        if self.tickets is not None:
            client_init = await rfb_auth.admit(reader, writer, self.tickets)
            if client_init is None:
                return
        try:
            vnc_reader, vnc_writer = await open_vnc(self.vnc_socket)
        except ConsoleUnavailable as exc:
            log.info("VNC client %s refused: %s", writer.get_extra_info("peername"), exc)
            return
        try:
            if client_init is not None:
                try:
                    await rfb_auth.connect_qemu(
                        vnc_reader, vnc_writer, client_init, self.vnc_socket
                    )
                except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                    log.warning("VNC proxy to %s: %s", self.vnc_socket, exc)
                    return
            await first_completed(pipe(reader, vnc_writer), pipe(vnc_reader, writer))
        finally:
            await close_writer(vnc_writer)
