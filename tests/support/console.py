"""A node's serial shell over the server's WebSocket, as a test types on it.

``run(cmd)`` sends the command followed by an echo of a unique marker and the exit status, and
reads until the marker comes back: the output and the status of exactly that command. The
marker is typed split in two quoted halves, so the terminal's echo of what was typed never
matches it; only the shell's output does.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from virtlab.devtools.bootdisk import BOOT_MARKER

__all__ = ["SerialShell"]

_counter = itertools.count()


class SerialShell:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen = b""

    @classmethod
    async def open(cls, server: Any, node: dict, *, booted: bool = True) -> SerialShell:
        """``server``: a ``Server`` (or anything with its ``url`` and ``headers``)."""
        url = server.url.replace("http", "ws", 1) + node["consoles"]["serial"]["ws"]
        shell = cls(await connect(url, max_size=None, additional_headers=server.headers))
        if booted:
            await shell.wait_for(BOOT_MARKER.encode(), 120)
        return shell

    async def wait_for(self, pattern: bytes, timeout: float = 60) -> re.Match[bytes]:
        async def loop() -> re.Match[bytes]:
            while not (match := re.search(pattern, self.seen)):
                self.seen += await self.ws.recv()  # type: ignore[operator]
            return match

        match = await asyncio.wait_for(loop(), timeout)
        self.seen = self.seen[match.end() :]
        return match

    async def run(self, command: str, timeout: float = 60) -> tuple[int, str]:
        n = next(_counter)
        tag = f"__V{n}__"
        await self.ws.send(f'{command}; echo "__V""{n}__" $?\r')
        match = await self.wait_for(rf"(?s)(.*?){tag} (\d+)".encode(), timeout)
        return int(match[2]), match[1].decode(errors="replace")

    async def close(self) -> None:
        await self.ws.close()
