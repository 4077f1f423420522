"""The relay of a captured, impaired or bridged link: two ends and asyncio in between.

Each end is a NIC of a node on the server's own host (a unix datagram socket) or of a node on a
libvirt host (a UDP socket its tunnel talks to): see :mod:`virtlab.links.ends`. Everything below
the receive, from loss to capture, is the same for both kinds.

::

    relay = Relay(link_dir, Endpoint(r1_dir, 1), Endpoint(r2_dir, 1), seed=7)
    await relay.start()                         # binds link_dir/a.sock and link_dir/b.sock
    connect_via(relay.a, relay.a_sock, relay.b, relay.b_sock)
    relay.set_impairment("a_to_b", Impairment(delay_ms=100, loss_pct=1))
    relay.start_capture(link_dir / "capture.pcap")
    ...
    await relay.stop()

Node A's ``nicN.peer`` points at ``a.sock`` (see :mod:`virtlab.links.wiring`): what A sends
arrives there and leaves toward B's ``nicN.sock``; ``b.sock`` serves the other direction. An end
given as a :class:`~virtlab.links.ends.UdpEndpoint` instead listens on its UDP port and sends to
the node's tunnel. Each direction runs on its own, through these stages:

1. **receive** (counted: ``frames``, ``bytes``);
2. **loss** (``dropped_by_loss``) and **corruption** (``corrupted``), drawn from the
   direction's own :class:`random.Random` (``seed`` makes a run repeatable);
3. **queue**, only while the direction has a delay, jitter or rate limit (or frames still
   queued from one): a FIFO of at most ``queue_limit`` frames, tail-dropped when full
   (``dropped_queue``). Release time is receive time + delay ± jitter, but never before the
   frame ahead of it: frames keep their order. The rate limit's token bucket paces the head;
4. **deliver**: the frame is captured (a tap at the receiving end: after loss, corruption,
   delay and rate; in the pcap file and to live subscribers, both directions in one time
   line), then sent to the receiver (``forwarded``). A receiver that is not running (its socket
   is missing or dead: ``ENOENT``; its UDP port unreachable: ``ECONNREFUSED``) costs the frame
   (``dropped_send``). A
   receiver whose queue is full holds the direction until it reads again, as QEMU itself does
   on a direct link: the sender's frames then wait in ``a.sock`` and in its own QEMU, instead
   of being dropped, which keeps TCP through a relay as fast as through a direct link.

Impairments change while traffic flows (:meth:`Relay.set_impairment`): the next frame uses the
new values; frames already queued keep their release times.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Literal, get_args

from virtlab.errors import Conflict, InvalidRequest
from virtlab.links.ends import GONE, End, UdpEndpoint, make_end
from virtlab.links.impairment import QUEUE_LIMIT, DirectionCounters, Impairment, Lane
from virtlab.links.pcap import PcapFile, PcapStream, Subscription
from virtlab.links.wiring import Endpoint

__all__ = ["MAX_FRAME", "QUEUE_LIMIT", "Direction", "DirectionCounters", "Relay"]

log = logging.getLogger("virtlab.links")

Direction = Literal["a_to_b", "b_to_a"]
DIRECTIONS: tuple[Direction, ...] = get_args(Direction)
MAX_FRAME = 69632  # QEMU's NET_BUFSIZE: no frame from a dgram netdev is larger
YIELD_EVERY = 64  # frames a reader handles before letting the other tasks run

Watcher = tuple[Callable[[DirectionCounters], bool], "asyncio.Future[None]"]


class _Way:
    """One direction: its two ends, its :class:`Lane`, and what waits on it."""

    def __init__(self, name: Direction, source: End, dest: End, lane: Lane) -> None:
        self.name = name
        self.source = source  # the sender's frames arrive on source.rx
        self.dest = dest  # and leave through dest.sender()
        self.lane = lane
        self.counters = lane.counters
        self.watchers: list[Watcher] = []
        self._waker: asyncio.Future[None] | None = None

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (``inf``: no limit), or until :meth:`poke`."""
        loop = asyncio.get_running_loop()
        fut = self._waker = loop.create_future()
        timer = loop.call_later(seconds, _wake, fut) if seconds != float("inf") else None
        try:
            await fut
        finally:
            self._waker = None
            if timer is not None:
                timer.cancel()

    def poke(self) -> None:
        """Wake the sender: a frame was queued or the impairment changed."""
        if self._waker is not None:
            _wake(self._waker)

    def counted(self) -> None:
        """The counters changed: wake the watchers whose condition now holds."""
        for watcher in [w for w in self.watchers if w[0](self.counters)]:
            self.watchers.remove(watcher)
            _wake(watcher[1])


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Relay:
    """Forwards frames between two NICs both ways, capturing and impairing on the way.

    ``seed`` (tests) makes loss, corruption and jitter repeatable; ``queue_limit`` bounds each
    direction's queue (frames); ``stream_buffer`` is how far (bytes) a live capture subscriber
    may fall behind before it is dropped. One relay runs once: start, then stop.
    """

    def __init__(
        self,
        link_dir: Path,
        a: Endpoint | UdpEndpoint,
        b: Endpoint | UdpEndpoint,
        *,
        seed: int | str | None = None,
        queue_limit: int = QUEUE_LIMIT,
        stream_buffer: int = 8 << 20,
    ) -> None:
        self.link_dir = Path(link_dir)
        self.a, self.b = a, b
        self._ends = (make_end(a, self.a_sock), make_end(b, self.b_sock))
        end_a, end_b = self._ends
        self._ways = {
            "a_to_b": _Way("a_to_b", end_a, end_b, Lane(_rng(seed, "a"), queue_limit)),
            "b_to_a": _Way("b_to_a", end_b, end_a, Lane(_rng(seed, "b"), queue_limit)),
        }
        self._tasks: list[asyncio.Task[None]] = []
        self._pcap: PcapFile | None = None
        self._stream = PcapStream(max_buffered=stream_buffer)
        self._state: Literal["new", "running", "stopped"] = "new"
        self.capture_error: str | None = None  # why the last capture file was closed early

    @property
    def a_sock(self) -> Path:
        """The socket ``a``'s ``nicN.peer`` points at: frames from A arrive here (when ``a`` is
        a local NIC)."""
        return self.link_dir / "a.sock"

    @property
    def b_sock(self) -> Path:
        return self.link_dir / "b.sock"

    @property
    def running(self) -> bool:
        return self._state == "running"

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind both ends (``a.sock`` and ``b.sock`` replacing stale ones, or UDP ports) and
        start forwarding; if either cannot be bound, neither stays."""
        if self._state != "new":
            raise Conflict(f"the relay in {self.link_dir} is {self._state}; make a new one")
        self.link_dir.mkdir(parents=True, exist_ok=True)
        try:
            for end in self._ends:
                end.open()
        except BaseException:
            self._close_sockets()
            raise
        self._state = "running"
        for way in self._ways.values():
            for work, role in ((self._read, "read"), (self._drain, "send")):
                name = f"relay {self.link_dir} {way.name} {role}"
                task = asyncio.create_task(work(way), name=name)
                task.add_done_callback(self._task_done)
                self._tasks.append(task)

    async def stop(self) -> None:
        """Stop forwarding, drop queued frames, remove the sockets, end captures. Idempotent."""
        if self._state == "stopped":
            return
        self._state = "stopped"
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._close_sockets()
        self.stop_capture()
        self._stream.close()
        for way in self._ways.values():
            for _, fut in way.watchers:
                fut.cancel()
            way.watchers.clear()

    def _close_sockets(self) -> None:
        for end in self._ends:
            end.close()
        for way in self._ways.values():
            way.lane.queue.clear()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed; the link is broken", task.get_name(), exc_info=task.exception())

    # -- impairment and counters --------------------------------------------------------------

    def _way(self, direction: str) -> _Way:
        if direction not in self._ways:
            known = ", ".join(DIRECTIONS)
            raise InvalidRequest(f"a direction is one of {known}, not {direction!r}")
        return self._ways[direction]

    def impairment(self, direction: Direction) -> Impairment:
        return self._way(direction).lane.impairment

    def set_impairment(self, direction: Direction, impairment: Impairment) -> None:
        """Impair ``direction`` from the next frame on (``Impairment()``: none)."""
        way = self._way(direction)
        way.lane.set(impairment, time.monotonic())  # the event loop's clock
        way.poke()

    def counters(self, direction: Direction) -> DirectionCounters:
        """A snapshot of ``direction``'s counters."""
        return replace(self._way(direction).counters)

    def queued(self, direction: Direction) -> int:
        """Frames waiting in ``direction``'s queue."""
        return len(self._way(direction).lane.queue)

    async def wait_counters(
        self, direction: Direction, condition: Callable[[DirectionCounters], bool]
    ) -> DirectionCounters:
        """Wait until ``condition(counters)`` holds for ``direction``; return a snapshot.

        Bound it with ``asyncio.timeout``. Cancelled when the relay stops.
        """
        way = self._way(direction)
        if not condition(way.counters):
            fut = asyncio.get_running_loop().create_future()
            watcher: Watcher = (condition, fut)
            way.watchers.append(watcher)
            try:
                await fut
            finally:
                if watcher in way.watchers:
                    way.watchers.remove(watcher)
        return replace(way.counters)

    # -- capture ------------------------------------------------------------------------------

    @property
    def capture_path(self) -> Path | None:
        return self._pcap.path if self._pcap is not None else None

    def start_capture(self, path: Path) -> None:
        """Write both directions to the pcap file ``path`` (appending if this relay wrote it)."""
        if self._pcap is not None:
            if self._pcap.path == Path(path):
                return
            raise Conflict(f"the link is already captured to {self._pcap.path}; stop that first")
        self._pcap = PcapFile(path)
        self.capture_error = None

    def stop_capture(self) -> None:
        """Close the capture file (idempotent); live subscribers are not affected."""
        if self._pcap is not None:
            self._pcap.close()
            self._pcap = None

    def subscribe_capture(self) -> Subscription:
        """A live capture: an async iterator of pcap bytes (global header, then records).

        Close it (``close()`` or ``async with``) when the reader goes away. It ends when the
        relay stops, or early if the reader falls too far behind (``dropped`` is then true).
        """
        sub = self._stream.subscribe()
        if self._state == "stopped":
            sub.close()
        return sub

    def _capture(self, frame: bytes) -> None:
        ts = time.time_ns()
        if self._pcap is not None:
            try:
                self._pcap.write(frame, ts)
            except OSError as exc:
                self.capture_error = f"writing {self._pcap.path} failed: {exc}"
                log.warning("capture stopped: %s", self.capture_error)
                self.stop_capture()
        self._stream.publish(frame, ts)

    # -- forwarding ---------------------------------------------------------------------------

    async def _read(self, way: _Way) -> None:
        """Receive and admit frames; send at once those that need no queue."""
        loop = asyncio.get_running_loop()
        rx, lane = way.source.rx, way.lane
        assert rx is not None
        while True:
            try:
                frame = await loop.sock_recv(rx, MAX_FRAME)  # only this awaits an idle socket
            except ConnectionRefusedError:  # a UDP end's node did not take an earlier frame
                continue
            budget = YIELD_EVERY
            while True:
                out = lane.admit(frame, time.monotonic())
                if out is None:
                    if len(lane.queue) == 1:
                        way.poke()  # the queue was empty: the sender sleeps without a limit
                elif not self._try_send(way, out):
                    await self._send_when_ready(way, out)
                if way.watchers:
                    way.counted()
                budget -= 1
                if not budget:  # frames keep coming: let the other direction and senders run
                    await asyncio.sleep(0)
                    budget = YIELD_EVERY
                try:
                    frame = rx.recv(MAX_FRAME)
                except (BlockingIOError, ConnectionRefusedError):
                    break

    async def _drain(self, way: _Way) -> None:
        """Send queued frames when their time comes, at the rate the bucket allows."""
        lane, budget = way.lane, YIELD_EVERY
        while True:
            wait, frame = lane.head(time.monotonic())
            if frame is None:
                await way.sleep(wait)
                budget = YIELD_EVERY
                continue
            if not self._try_send(way, frame):
                await self._send_when_ready(way, frame)  # the head stays queued: order holds
            lane.sent()
            if way.watchers:
                way.counted()
            budget -= 1
            if not budget:
                await asyncio.sleep(0)
                budget = YIELD_EVERY

    def _try_send(self, way: _Way, frame: bytes) -> bool:
        """Capture and send ``frame``; ``False`` if the receiver's queue is full (not sent)."""
        if self._pcap is not None or self._stream.active:
            self._capture(frame)
        tx = way.dest.sender()
        if tx is None:
            way.counters.dropped_send += 1
            return True
        try:
            tx.send(frame)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._lost(way, exc)
            return True
        way.counters.forwarded += 1
        return True

    async def _send_when_ready(self, way: _Way, frame: bytes) -> None:
        """Wait until the receiver reads again (it wakes us), then send ``frame``."""
        tx = way.dest.sender()
        assert tx is not None  # it just refused the frame for being full
        if way.watchers:
            way.counted()
        try:
            await asyncio.get_running_loop().sock_sendall(tx, frame)
        except OSError as exc:
            self._lost(way, exc)
            return
        way.counters.forwarded += 1

    def _lost(self, way: _Way, exc: OSError) -> None:
        """The receiver went away: drop the frame, recover for the next one."""
        if exc.errno not in GONE:
            log.debug("relay %s: sending to %s failed: %s", way.name, way.dest, exc)
        way.counters.dropped_send += 1
        way.dest.lost(exc)


def _rng(seed: int | str | None, side: str) -> random.Random:
    return random.Random(None if seed is None else f"{seed}/{side}")
