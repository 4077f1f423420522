"""Classic pcap (not pcapng): a file tshark reads while it grows, and a live stream for Wireshark.

The format is libpcap's: a 24-byte global header (magic ``a1b2c3d4`` in little-endian byte
order, version 2.4, snaplen :data:`SNAPLEN`, link type 1 = Ethernet), then one 16-byte record
header (seconds, microseconds, captured length, original length) before each frame.

- :class:`PcapFile` appends: each record is written with one unbuffered ``write``, so
  ``tshark -r`` reads every frame captured so far while the capture runs. Reopening a file
  this module wrote continues it.
- :class:`PcapStream` fans records out to live subscribers (``wireshark -k -i -`` behind
  ``GET /api/links/{id}/capture/stream``). Each :class:`Subscription` is an async iterator of
  ``bytes`` chunks: the global header first, then records as they come. Publishing never
  waits: a subscriber that falls :attr:`PcapStream.max_buffered` bytes behind is dropped (its
  iterator ends) so that it can never slow the link down.
"""

from __future__ import annotations

import asyncio
import collections
import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType

from virtlab.errors import InvalidRequest

__all__ = [
    "LINKTYPE_ETHERNET",
    "PCAP_MAGIC",
    "SNAPLEN",
    "PcapFile",
    "PcapStream",
    "Subscription",
    "global_header",
    "record",
]

PCAP_MAGIC = 0xA1B2C3D4  # microsecond timestamps
SNAPLEN = 262144
LINKTYPE_ETHERNET = 1
_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


def global_header(snaplen: int = SNAPLEN) -> bytes:
    return _GLOBAL.pack(PCAP_MAGIC, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET)


def record(frame: bytes, ts_ns: int, snaplen: int = SNAPLEN) -> bytes:
    """One record: header (timestamp ``ts_ns`` since the epoch, in microseconds) and frame."""
    seconds, rest = divmod(ts_ns, 1_000_000_000)
    data = frame[:snaplen]
    return _RECORD.pack(seconds, rest // 1000, len(data), len(frame)) + data


class PcapFile:
    """An append-only capture file; :meth:`write` makes each record visible at once."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._file = open(fd, "ab", buffering=0)  # noqa: SIM115 (closed by close())
        try:
            if os.fstat(fd).st_size == 0:
                self._file.write(global_header())
            else:
                _check_header(self.path)
        except BaseException:
            self._file.close()
            raise
        self.frames = 0

    def write(self, frame: bytes, ts_ns: int) -> None:
        self._file.write(record(frame, ts_ns))
        self.frames += 1

    def close(self) -> None:
        self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def __enter__(self) -> PcapFile:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _check_header(path: Path) -> None:
    with path.open("rb") as f:
        head = f.read(_GLOBAL.size)
    ok = len(head) == _GLOBAL.size
    if ok:
        magic, _, _, _, _, _, linktype = _GLOBAL.unpack(head)
        ok = magic == PCAP_MAGIC and linktype == LINKTYPE_ETHERNET
    if not ok:
        raise InvalidRequest(
            f"{path} exists and is not an Ethernet pcap file this relay can append to; "
            "choose another capture path"
        )


class Subscription:
    """A live subscriber's view: ``async for chunk in subscription``; :meth:`close` when done.

    Registered from the moment it is made (not from the first ``__anext__``), so no frame
    published after :meth:`PcapStream.subscribe` returns is missed.
    """

    def __init__(self, stream: PcapStream) -> None:
        self._stream = stream
        header = global_header()
        self._chunks: collections.deque[bytes] = collections.deque([header])
        self._buffered = len(header)
        self._wakeup = asyncio.Event()
        self._wakeup.set()
        self.closed = False
        self.dropped = False  # True when it fell too far behind and was cut off

    def _push(self, chunk: bytes) -> bool:
        """Queue ``chunk``; ``False`` (and dropped) when the reader is too far behind."""
        if self._buffered + len(chunk) > self._stream.max_buffered:
            self.dropped = True
            self._end()
            return False
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self._wakeup.set()
        return True

    def _end(self) -> None:
        self.closed = True
        if self.dropped:
            self._chunks.clear()  # free the memory now; the reader sees the end
            self._buffered = 0
        self._wakeup.set()

    def close(self) -> None:
        """Stop receiving (idempotent): the iterator ends after what is already queued."""
        self._stream._remove(self)
        self._end()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self.closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        return chunk

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class PcapStream:
    """Fan-out of capture records to live subscribers; publishing never blocks."""

    def __init__(self, max_buffered: int = 8 << 20) -> None:
        self.max_buffered = max_buffered
        self._subscribers: list[Subscription] = []
        self.dropped_subscribers = 0

    @property
    def active(self) -> bool:
        return bool(self._subscribers)

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        self._subscribers.append(sub)
        return sub

    def publish(self, frame: bytes, ts_ns: int) -> None:
        if not self._subscribers:
            return
        chunk = record(frame, ts_ns)
        for sub in list(self._subscribers):
            if not sub._push(chunk):
                self._remove(sub)
                self.dropped_subscribers += 1

    def close(self) -> None:
        """End every subscription (after what each has queued)."""
        for sub in list(self._subscribers):
            sub.close()

    def _remove(self, sub: Subscription) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)
