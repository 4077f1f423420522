"""One reader of a node's serial socket, any number of clients, and a scrollback.

QEMU's serial chardev (``-chardev socket,path=NODE/serial.sock,server=on,wait=off``) accepts
one client at a time, so each node has one :class:`SerialHub` that holds that connection and
fans its output out to every :class:`Subscription` (telnet, WebSocket, CLI)::

    hub = SerialHub(paths.serial, log_path=paths.root / "serial.log")
    await hub.start()                    # waits for QEMU's socket (bounded)
    with hub.subscribe() as sub:         # the scrollback first, then live output
        async for chunk in sub: ...
    await hub.write(b"ls\\r")            # keystrokes, from any client
    await hub.stop()

Decisions:

* **Connecting** (:meth:`SerialHub.start`, bounded): a node the QEMU driver has just started
  comes with its connection made before QEMU ran (``start(sock=…)``), which already holds
  whatever the guest printed. Otherwise (a re-adopted node, another driver): after a failed
  try the socket's directory is watched with inotify (through libc) and each new entry there
  triggers a new try; a back-off (10 ms doubling to 0.5 s, back to 10 ms after each event)
  covers a socket that exists but refuses (QEMU between ``bind`` and ``listen``; a dead
  QEMU's stale socket).
* **No reconnecting.** A node reset keeps QEMU's chardev connected; the socket closes only when
  QEMU exits. End of file closes the hub: subscriptions end after a notice line, and
  :attr:`SerialHub.closed` is set. A new QEMU gets a new hub.
* **Slow clients are dropped**, never waited for: a subscription holding more than
  ``client_queue_bytes`` unread has its backlog discarded, gets one notice line and ends
  (``end_reason == "slow"``). Dropping the oldest bytes instead would garble a terminal
  silently; reconnecting gives the scrollback, the consistent way to skip ahead.
* **Persistent scrollback** (``log_path``): output is appended to that file (mode 0600, no
  fsync) and read back by :meth:`SerialHub.start`, so a restarted server's new hub shows the
  boot log again. The file stays under ``2 * scrollback_bytes`` (rewritten to the current
  scrollback when it would pass that). Output while no hub is connected is lost (QEMU drops it).
  A file error turns persistence off, with a log message; the console goes on. The ring and
  the file are :class:`virtlab.consoles.scrollback.Scrollback`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
from collections import deque
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from virtlab._util.dirwatch import DirWatch
from virtlab.consoles.scrollback import Scrollback
from virtlab.errors import Conflict

__all__ = ["ConsoleUnavailable", "HubState", "SerialHub", "Subscription", "first_completed"]

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_SCROLLBACK = 256 * 1024
_READ_SIZE = 64 * 1024
_MAX_CHUNK = 64 * 1024  # a subscription hands out queued chunks joined up to this size

NOTICE_SLOW = b"\r\n[virtlab: this console client fell too far behind and was disconnected]\r\n"
NOTICE_EXITED = b"\r\n[virtlab: serial console closed: the node's QEMU exited]\r\n"
NOTICE_STOPPED = b"\r\n[virtlab: serial console closed by the server]\r\n"
NOTICE_UNAVAILABLE = b"\r\n[virtlab: serial console unavailable: is the node running?]\r\n"
_NOTICES = {"exited": NOTICE_EXITED, "stopped": NOTICE_STOPPED, "unavailable": NOTICE_UNAVAILABLE}


class ConsoleUnavailable(Conflict):
    """A console cannot be reached: the node's socket is missing, refuses, or has closed."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


class HubState(enum.Enum):
    NEW = "new"
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"


async def first_completed(*coros: Coroutine[Any, Any, T]) -> T:
    """Run ``coros`` together; when the first returns, cancel the others; return its result."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return next(iter(done)).result()


class Subscription:
    """An async iterator of output chunks: the scrollback at subscription time, then live data.

    Ends when the hub closes (after a notice line), when the client is too slow (see the module
    docstring; :attr:`end_reason` is then ``"slow"``), or when :meth:`close` is called.
    """

    def __init__(self, hub: SerialHub, limit: int, scrollback: bytes) -> None:
        self._hub = hub
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._waiter: asyncio.Future[None] | None = None
        self.end_reason: str | None = None  # "closed", "slow", "unsubscribed"
        if scrollback:
            self._chunks.append(scrollback)
            self._queued = len(scrollback)

    @property
    def ended(self) -> bool:
        return self.end_reason is not None

    def _feed(self, chunk: bytes) -> None:
        if self.end_reason is not None:
            return
        if self._queued + len(chunk) > self._limit:
            self._chunks.clear()
            self._queued = 0
            self._end("slow", NOTICE_SLOW)
            return
        self._chunks.append(chunk)
        self._queued += len(chunk)
        self._wake()

    def _end(self, reason: str, notice: bytes = b"") -> None:
        if self.end_reason is not None:
            return
        self.end_reason = reason
        if notice:
            self._chunks.append(notice)
            self._queued += len(notice)
        self._hub._subscribers.discard(self)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def close(self) -> None:
        """Unsubscribe; the iteration ends at once (queued chunks are discarded)."""
        self._chunks.clear()
        self._queued = 0
        self._end("unsubscribed")

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self.end_reason is not None:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        if len(chunk) < _MAX_CHUNK and self._chunks:
            parts = [chunk]
            size = len(chunk)
            while self._chunks and size + len(self._chunks[0]) <= _MAX_CHUNK:
                parts.append(self._chunks.popleft())
                size += len(parts[-1])
            chunk = b"".join(parts)
        self._queued -= len(chunk)
        return chunk


class SerialHub:
    """The one connection to a node's serial socket, shared by any number of subscribers."""

    def __init__(
        self,
        socket_path: Path,
        *,
        scrollback_bytes: int = DEFAULT_SCROLLBACK,
        client_queue_bytes: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.scrollback_bytes = scrollback_bytes
        self.client_queue_bytes = client_queue_bytes or max(1 << 20, 2 * scrollback_bytes)
        if self.client_queue_bytes <= scrollback_bytes:
            raise ValueError("client_queue_bytes must be larger than scrollback_bytes")
        self.state = HubState.NEW
        self.connected = asyncio.Event()  # set once the socket is connected
        self.closed = asyncio.Event()  # set when the hub is closed for good
        self.close_reason: str | None = None  # "exited", "stopped", "unavailable"
        self._scrollback = Scrollback(scrollback_bytes, log_path)
        self._subscribers: set[Subscription] = set()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._watch: DirWatch | None = None  # while start() waits for the socket

    def __repr__(self) -> str:
        return f"<SerialHub {self.socket_path} {self.state.value}>"

    @property
    def scrollback(self) -> bytes:
        return self._scrollback.data

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self, timeout: float = 30.0, *, sock: socket.socket | None = None) -> None:
        """Connect to the socket, waiting up to ``timeout`` s for it to appear and accept;
        or take over ``sock``, a connection to it made already (the QEMU driver's, made
        before QEMU ran: it holds the guest's first bytes).

        Raises :class:`ConsoleUnavailable` when it does not; the hub is then closed.
        """
        if self.state is not HubState.NEW:
            raise RuntimeError(f"{self!r} was already started")
        self.state = HubState.CONNECTING
        self._scrollback.load()
        try:
            if sock is not None:
                reader, self._writer = await asyncio.open_unix_connection(sock=sock)
            else:
                reader, self._writer = await self._connect(timeout)
            if self.state is not HubState.CONNECTING:  # stop() came during the last try
                raise self._unavailable("was stopped while connecting")
        except BaseException as exc:
            self._close("unavailable" if isinstance(exc, Exception) else "stopped")
            if self._writer is not None:
                self._writer.close()
            raise
        self.state = HubState.OPEN
        self.connected.set()
        self._reader_task = asyncio.create_task(self._read(reader), name=f"serial hub {self}")

    def _unavailable(self, what: str) -> ConsoleUnavailable:
        return ConsoleUnavailable(
            f"the serial console at {self.socket_path} {what}", self.socket_path
        )

    async def _connect(self, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + timeout, 0.01
        try:
            while self.state is HubState.CONNECTING:
                try:
                    return await asyncio.open_unix_connection(self.socket_path)
                except (FileNotFoundError, ConnectionRefusedError) as exc:
                    last: OSError = exc
                except OSError as exc:
                    raise self._unavailable(f"cannot be reached: {exc}") from exc
                if self._watch is None:  # watch from now on, and try again: no event is missed
                    self._watch = DirWatch(self.socket_path.parent)
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise self._unavailable(
                        f"did not accept a connection within {timeout:g} s ({last.strerror}); "
                        "is the node running?"
                    ) from last
                # Each new entry restarts the back-off: the socket may be bound, not listening.
                woke = await self._watch.wait(min(delay, remaining))
                delay = 0.01 if woke else min(delay * 2, 0.5)
            raise self._unavailable("was stopped while connecting")
        finally:
            if self._watch is not None:
                self._watch.close()
                self._watch = None

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while chunk := await reader.read(_READ_SIZE):
                self._scrollback.add(chunk)
                for sub in list(self._subscribers):
                    sub._feed(chunk)
        except OSError as exc:
            log.warning("serial console %s: read failed: %s", self.socket_path, exc)
        self._close("exited")

    def _close(self, reason: str) -> None:
        if self.state is HubState.CLOSED:
            return
        self.state = HubState.CLOSED
        self.close_reason = reason
        for sub in list(self._subscribers):
            sub._end("closed", _NOTICES[reason])
        if self._writer is not None:
            self._writer.close()
        self._scrollback.close()
        self.closed.set()

    async def stop(self) -> None:
        """Disconnect from QEMU (which goes on running) and end every subscription."""
        if self._watch is not None:  # start() is waiting: make it give up now
            self._watch.wake()
        task = self._reader_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._close("stopped")
        if self._writer is not None:
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()

    async def __aenter__(self) -> SerialHub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- clients ------------------------------------------------------------------------

    def subscribe(self) -> Subscription:
        """A new subscription: the current scrollback, then live output until the hub closes."""
        sub = Subscription(self, self.client_queue_bytes, self._scrollback.data)
        if self.state is HubState.CLOSED:
            sub._end("closed")
        else:
            self._subscribers.add(sub)
        return sub

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    async def write(self, data: bytes) -> None:
        """Send ``data`` (keystrokes) to the guest; each call's bytes stay together."""
        if self.state is not HubState.OPEN or self._writer is None:
            raise self._unavailable(f"is {self.state.value}")
        if data:
            try:
                self._writer.write(data)
                await self._writer.drain()
            except OSError as exc:
                raise self._unavailable(f"failed a write: {exc}") from exc
