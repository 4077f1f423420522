"""A remote node's VNC, offered on the node's local ``vnc.sock`` as a local QEMU offers it.

A domain's VNC socket can be handed over only on a local libvirt connection, so a remote
domain's VNC listens on its host's management address (:mod:`virtlab.hosts.domain`). The
server's VNC WebSocket (:func:`virtlab.consoles.serve_vnc`) and TCP port
(:class:`virtlab.consoles.VncTcpProxy`) connect to a unix socket path; :class:`VncBridge`
listens there and opens, per client, a TCP connection to ``host:port``, passing bytes through
untouched (the domain has ``sharePolicy='force-shared'``, as local nodes have).

VNC on a host's address is reachable by anyone on that network: keep hosts' management
network to the server and the hosts (or use a VNC password; phase 2).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from virtlab.consoles.hub import first_completed
from virtlab.consoles.vnc import close_writer, pipe

__all__ = ["VncBridge"]

log = logging.getLogger("virtlab.hosts")


class VncBridge:
    def __init__(self, path: Path, address: str, port: int) -> None:
        self.path = Path(path)
        self.address = address
        self.port = port  # may change when the domain is re-adopted
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, self.path)
        self.path.chmod(0o600)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.address, self.port)
        except OSError as exc:
            log.info("VNC of %s:%s refused a client: %s", self.address, self.port, exc)
            writer.close()
            return
        try:
            await first_completed(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            await close_writer(up_writer)
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.path.unlink(missing_ok=True)
