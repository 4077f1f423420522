"""A remote node's serial console, served on the node's local ``serial.sock`` as QEMU would.

The console hub (:class:`virtlab.consoles.SerialHub`) reads a unix socket that QEMU listens on
(``server=on,wait=off``: one client at a time). For a node on a libvirt host the driver puts a
:class:`ConsoleBridge` at that same path, fed by ``virDomainOpenConsole`` (the domain's
``<serial type='pty'>``), so the hub, the telnet port and the WebSocket work unchanged::

    bridge = ConsoleBridge(spec.paths.serial, "r1")
    await bridge.start()                     # listens on serial.sock
    await bridge.attach(host, dom)           # the domain is still paused: nothing is missed
    await dom.resume()
    ...
    await bridge.stop()                      # the domain ended: the hub sees end of file

Differences from QEMU's socket, all in the hub's favour:

* Output that arrives while no client is connected is **kept** (up to ``buffer_bytes``, the
  oldest dropped past that) and handed to the next client, where QEMU drops it.
* The upstream may change under a connected client: when the host's connection drops and
  comes back, :meth:`attach` is called again with the new stream; the client stays connected.
  What the guest printed in between is in the host's ``<log>`` file, not here.

libvirt delivers stream events on its own event thread; data crosses to the asyncio loop with
``call_soon_threadsafe``. Keystrokes are sent from a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from pathlib import Path

import libvirt

from virtlab.hosts.connection import HostConnection

__all__ = ["ConsoleBridge"]

log = logging.getLogger("virtlab.hosts")
_READ = 64 * 1024
_EVENTS = (
    libvirt.VIR_STREAM_EVENT_READABLE
    | libvirt.VIR_STREAM_EVENT_ERROR
    | libvirt.VIR_STREAM_EVENT_HANGUP
)


class ConsoleBridge:
    """One domain's console stream on one local unix socket; see the module docstring."""

    def __init__(self, path: Path, node: str, buffer_bytes: int = 1 << 20) -> None:
        self.path = Path(path)
        self.node = node
        self.buffer_bytes = buffer_bytes
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0
        self._server: asyncio.base_events.Server | None = None
        self._client: asyncio.StreamWriter | None = None
        self._client_task: asyncio.Task[None] | None = None
        self._stream: libvirt.virStream | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.received = 0  # bytes from the guest, in all

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, self.path)
        self.path.chmod(0o600)

    # -- upstream: the domain's console stream ----------------------------------------------------

    async def attach(self, host: HostConnection, dom: libvirt.virDomain) -> None:
        """(Re)open the domain's console stream and read from it from now on."""
        self.detach()
        conn = host.conn

        def open_stream() -> libvirt.virStream:
            stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
            dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
            stream.eventAddCallback(_EVENTS, self._on_stream, None)
            return stream

        self._stream = await host.call(f"open the console of node {self.node}", open_stream)

    def detach(self) -> None:
        """Let go of the stream (its connection is gone, or the domain ended)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(libvirt.libvirtError):
                stream.eventRemoveCallback()
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()

    def _on_stream(self, stream: libvirt.virStream, events: int, _opaque: object) -> None:
        """libvirt's event thread: drain what is readable, hand it to the loop."""
        ended = bool(events & (libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP))
        while not ended:
            try:
                data = stream.recv(_READ)
            except libvirt.libvirtError:
                ended = True
                break
            if data == -2:  # would block
                break
            if not data:
                ended = True
                break
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._feed, data)
        if ended:
            with contextlib.suppress(libvirt.libvirtError):
                stream.eventRemoveCallback()
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._upstream_ended, stream)

    def _upstream_ended(self, stream: libvirt.virStream) -> None:
        if self._stream is stream:
            self._stream = None
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()

    def _feed(self, data: bytes) -> None:
        self.received += len(data)
        client = self._client
        if client is not None and not client.is_closing():
            client.write(data)
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        while self._pending_bytes > self.buffer_bytes:
            self._pending_bytes -= len(self._pending.popleft())

    # -- downstream: one local client at a time (the hub) ------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._client is not None:  # like QEMU's chardev: one client
            writer.close()
            return
        self._client = writer
        if self._pending:
            writer.write(b"".join(self._pending))
            self._pending.clear()
            self._pending_bytes = 0
        try:
            while data := await reader.read(4096):
                stream = self._stream
                if stream is not None:
                    await asyncio.to_thread(_send_all, stream, data)
        except (OSError, libvirt.libvirtError) as exc:
            log.info("console of node %s: a write failed: %s", self.node, exc)
        finally:
            if self._client is writer:
                self._client = None
            writer.close()

    async def stop(self) -> None:
        """The domain ended (or the server is going away): end the client, stop listening."""
        self.detach()
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._client is not None:
            self._client.close()
            self._client = None
        self.path.unlink(missing_ok=True)


def _send_all(stream: libvirt.virStream, data: bytes) -> None:
    """Send ``data`` on a non-blocking stream (keystrokes: small), waiting while it is full."""
    view = memoryview(data)
    deadline = time.monotonic() + 10
    while view:
        sent = stream.send(bytes(view))
        if sent == -2:
            if time.monotonic() > deadline:
                raise OSError("the console stream stayed full for 10 s")
            time.sleep(0.01)
            continue
        view = view[sent:]
