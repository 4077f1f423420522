"""Fake peers on real sockets for console tests: a QEMU socket server, and helpers.

::

    async with FakeSerialPeer(path, boot_log=b"booting\\r\\n") as qemu:
        hub = SerialHub(path)
        await hub.start()
        await hub.write(b"ls\\r")
        await qemu.wait_received(b"ls\\r")

:class:`FakeSerialPeer` listens where QEMU's ``-chardev socket,server=on,wait=off`` would, sends
its "boot log" to a client when it connects, records what it receives (and echoes it back,
like a tty), and :meth:`FakeSerialPeer.close` closes everything as an exiting QEMU does. With
``boot_log=b"RFB 003.008\\n"`` it also stands in for QEMU's VNC socket where only the bytes
matter. :func:`serve_app` runs a Starlette app with uvicorn in the test's own event loop.
Every wait is on an event or a condition, bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

__all__ = ["FakeSerialPeer", "read_until", "serve_app", "short_dir", "stale_socket"]


@contextlib.contextmanager
def short_dir(prefix: str = "vlcon-") -> Iterator[Path]:
    """A scratch directory with a short path (a unix socket path must fit in 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def stale_socket(path: Path) -> None:
    """Leave a socket file nobody listens on, as a QEMU killed with -9 does: connect refuses."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))


@contextlib.asynccontextmanager
async def serve_app(app: ASGIApp) -> AsyncIterator[int]:
    """Serve ``app`` on a loopback port in this event loop; yields the port.

    The socket is bound and listening before uvicorn starts, so clients can connect at once
    (the kernel queues them): nothing waits for a "started" message.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    config = uvicorn.Config(app, lifespan="off", ws="websockets-sansio", log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        yield listener.getsockname()[1]
    finally:
        server.should_exit = True
        await serving
        listener.close()


async def read_until(
    reader: asyncio.StreamReader, pattern: bytes | re.Pattern[bytes], timeout: float = 10.0
) -> bytes:
    """Read from ``reader`` until ``pattern`` has been seen; return everything read."""
    data = b""

    def found() -> bool:
        return bool(pattern.search(data) if isinstance(pattern, re.Pattern) else pattern in data)

    async with asyncio.timeout(timeout):
        while not found():
            chunk = await reader.read(65536)
            if not chunk:
                raise AssertionError(f"end of stream before {pattern!r}; got {data[-300:]!r}")
            data += chunk
    return data


class FakeSerialPeer:
    """Plays QEMU's serial socket server on ``path``."""

    def __init__(self, path: Path, *, boot_log: bytes = b"", echo: bool = True) -> None:
        self.path = path
        self.boot_log = boot_log
        self.echo = echo
        self.received = bytearray()
        self.connections = 0
        self.connected = asyncio.Event()
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> FakeSerialPeer:
        self._server = await asyncio.start_unix_server(self._on_client, self.path)
        return self

    async def __aenter__(self) -> FakeSerialPeer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writer = writer
        self.connections += 1
        try:
            writer.write(self.boot_log)
            await writer.drain()
            self.connected.set()
            while data := await reader.read(65536):
                async with self._changed:
                    self.received += data
                    self._changed.notify_all()
                if self.echo:
                    writer.write(data)
                    await writer.drain()
        except (OSError, asyncio.CancelledError):  # cancelled by close(): end quietly
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def send(self, data: bytes) -> None:
        """Guest output: send ``data`` to the connected client (waits for one to connect)."""
        await asyncio.wait_for(self.connected.wait(), 5)
        assert self._writer is not None
        self._writer.write(data)
        await self._writer.drain()

    async def wait_received(self, pattern: bytes, timeout: float = 5.0) -> bytes:
        """Wait until ``pattern`` is among the bytes received; return all received so far."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: pattern in self.received)
        return bytes(self.received)

    async def close(self) -> None:
        """Close the client connection and the listener and remove the socket: QEMU exits."""
        if self._server is not None:
            self._server.close()
        if self._writer is not None:
            self._writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
