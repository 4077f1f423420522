"""One open connection to a libvirt host, kept open, watched, and opened again when it drops.

::

    host = HostConnection("h1", "qemu+tls://10.0.0.5/system")
    host.listeners.append(driver)          # on_host_up / on_host_down / on_lifecycle
    await host.open()                      # HostUnreachable if it does not answer
    info = await host.info()               # versions, accelerators, CPUs, memory
    dom = await host.call("look up r1", host.conn.lookupByName, "virtlab-…")
    await host.close()

libvirt-python is blocking: every call runs in a worker thread (:meth:`HostConnection.call`),
never on the asyncio loop. Events (domain lifecycle, stream data, keepalive, a connection's
end) need libvirt's event loop, which is process-wide by libvirt's design: the first
connection registers libvirt's default implementation and runs it in one daemon thread
(:func:`ensure_event_loop`); its callbacks are handed to the asyncio loop with
``call_soon_threadsafe``. Opening costs 0.5 ms (unix), 7 ms (TLS), 300 ms (ssh); the first one
to a host waits ~8 s while libvirt probes QEMU there.

A host that stops answering is noticed two ways: a closed socket (daemon stopped, host
rebooted) ends the connection at once; a silent one (host frozen, network cut) fails libvirt's
keepalive after ``interval * (count + 1)`` seconds. Either way the listeners hear
``on_host_down`` and the connection retries with a back-off until the host answers, then
``on_host_up`` (the driver re-adopts its nodes there).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import libvirt

from virtlab.hosts.errors import HostFailure, HostUnreachable

__all__ = [
    "HostConnection",
    "HostInfo",
    "HostListener",
    "HostStatus",
    "ensure_event_loop",
    "libvirt_version",
]

log = logging.getLogger("virtlab.hosts")
T = TypeVar("T")

_event_lock = threading.Lock()
_event_thread: threading.Thread | None = None
_CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "a socket error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "the host closed the connection",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "the host stopped answering (keepalive)",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by us",
}


def _ignore_error(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr unless a handler takes it; ours are raised."""


def ensure_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread, once per process.

    libvirt allows one event implementation per process and no way to remove it, so this is
    process-wide state by necessity; it must exist before the first connection is opened.
    """
    global _event_thread
    with _event_lock:
        if _event_thread is not None:
            return
        libvirt.registerErrorHandler(_ignore_error, None)
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        _event_thread = threading.Thread(target=run, name="libvirt-events", daemon=True)
        _event_thread.start()


def libvirt_version(number: int) -> str:
    """libvirt's version numbers (``9000000``) as text (``9.0.0``)."""
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


class HostStatus(enum.StrEnum):
    NEW = "new"
    UP = "up"
    DOWN = "down"  # it stopped answering; retrying
    CLOSED = "closed"


class HostListener(Protocol):
    def on_host_up(self, host: HostConnection) -> None: ...

    def on_host_down(self, host: HostConnection, reason: str) -> None: ...

    def on_lifecycle(self, host: HostConnection, domain: str, event: int, detail: int) -> None: ...


@dataclass(frozen=True)
class HostInfo:
    """What a host has and offers, as ``virtlab doctor`` and the API will show it."""

    name: str
    uri: str
    hostname: str
    libvirt_version: str
    qemu_version: str
    accelerators: tuple[str, ...]  # "kvm" and/or "qemu" (TCG), as libvirt offers them
    cpus: int
    memory_mb: int
    free_memory_mb: int
    domains: int  # running domains, virtlab's or not


@dataclass
class HostConnection:
    """A libvirt host by name and URI; see the module docstring."""

    name: str
    uri: str
    keepalive_interval: int = 5
    keepalive_count: int = 3
    open_timeout: float = 60.0
    retry_delays: tuple[float, float] = (0.25, 10.0)  # first, longest
    listeners: list[HostListener] = field(default_factory=list)
    status: HostStatus = HostStatus.NEW
    down_reason: str = ""
    _conn: libvirt.virConnect | None = field(default=None, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _event_ids: list[int] = field(default_factory=list, repr=False)
    _retry: asyncio.Task[None] | None = field(default=None, repr=False)
    _late: set[asyncio.Future[Any]] = field(default_factory=set, repr=False)  # given-up opens
    up: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    address: str = ""  # the host's IP address, as the URI names it (resolved at open)

    def __post_init__(self) -> None:
        host = urlsplit(self.uri).hostname
        self.hostname = host or "localhost"

    # -- opening and closing ----------------------------------------------------------------

    async def open(self) -> None:
        """Connect, or raise :class:`HostUnreachable` saying why."""
        if self.status is HostStatus.UP:
            return
        ensure_event_loop()
        self._loop = asyncio.get_running_loop()
        try:
            await self._open_within()
        except TimeoutError as exc:
            raise HostUnreachable(
                f"host {self.name} ({self.uri}) did not answer within {self.open_timeout:g} s; "
                "is its libvirtd running and reachable?",
                self.name,
            ) from exc
        except libvirt.libvirtError as exc:
            raise HostUnreachable(
                f"cannot connect to host {self.name} ({self.uri}): {exc}; check the URI, the "
                "daemon and (for TLS) the client certificate",
                self.name,
            ) from exc
        self._set_up()

    async def _open_within(self) -> None:
        """Open within ``open_timeout``. A worker thread cannot be stopped: an open given up on
        (a host that accepts but does not answer) may still succeed later, when the host wakes;
        that connection is closed then, never kept beside the one in use."""
        opening = asyncio.get_running_loop().run_in_executor(None, self._open_blocking)
        try:
            conn, ids = await asyncio.wait_for(asyncio.shield(opening), self.open_timeout)
        except BaseException:
            self._late.add(opening)
            opening.add_done_callback(self._close_late)
            raise
        self._conn, self._event_ids = conn, ids

    def _close_late(self, opening: asyncio.Future[tuple[libvirt.virConnect, list[int]]]) -> None:
        self._late.discard(opening)
        if not opening.cancelled() and opening.exception() is None:
            conn, ids = opening.result()
            log.debug("host %s: closing a connection that opened after it was given up", self.name)
            closing = opening.get_loop().run_in_executor(None, self._close_blocking, conn, ids)
            self._late.add(closing)
            closing.add_done_callback(self._late.discard)

    def _open_blocking(self) -> tuple[libvirt.virConnect, list[int]]:
        if not self.address:
            infos = socket.getaddrinfo(self.hostname, None, type=socket.SOCK_STREAM)
            self.address = str(infos[0][4][0])
        conn = libvirt.open(self.uri)
        try:
            conn.setKeepAlive(self.keepalive_interval, self.keepalive_count)
            conn.registerCloseCallback(self._closed_cb, None)
            ids = [conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle_cb, None
            )]  # fmt: skip
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
            raise
        return conn, ids

    def _set_up(self) -> None:
        self.status, self.down_reason = HostStatus.UP, ""
        self.up.set()
        log.info("host %s is up (%s)", self.name, self.uri)
        for listener in list(self.listeners):
            listener.on_host_up(self)

    async def close(self) -> None:
        """Disconnect (the host's domains run on)."""
        self.status = HostStatus.CLOSED
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
        conn, self._conn = self._conn, None
        self.up.clear()
        if conn is not None:
            await asyncio.to_thread(self._close_blocking, conn, self._event_ids)
        deadline = asyncio.get_running_loop().time() + self.open_timeout
        while self._late:  # opens given up on, and their closing: let go of them too
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            await asyncio.wait(set(self._late), timeout=left)

    @staticmethod
    def _close_blocking(conn: libvirt.virConnect, ids: list[int]) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            for event_id in ids:
                conn.domainEventDeregisterAny(event_id)
            conn.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    # -- events (from libvirt's event thread) ---------------------------------------------------

    def _closed_cb(self, _conn: libvirt.virConnect, reason: int, _opaque: object) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._lost, _CLOSE_REASONS.get(reason, str(reason)))

    def _lifecycle_cb(
        self, _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int, detail: int,
        _opaque: object,
    ) -> None:  # fmt: skip
        name = dom.name()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._lifecycle, name, event, detail)

    def _lifecycle(self, name: str, event: int, detail: int) -> None:
        for listener in list(self.listeners):
            listener.on_lifecycle(self, name, event, detail)

    def lost(self, reason: str) -> None:
        """Someone saw it not answer (a call that timed out): down as if libvirt had noticed;
        the listeners hear ``on_host_down`` and the connection retries until it answers."""
        self._lost(reason)

    def _lost(self, reason: str) -> None:
        if self.status is not HostStatus.UP:
            return
        self.status, self.down_reason = HostStatus.DOWN, reason
        self.up.clear()
        conn, self._conn, ids, self._event_ids = self._conn, None, self._event_ids, []
        log.warning("host %s is down: %s; retrying", self.name, reason)
        if conn is not None:  # let go of it (not on the loop); its events hold it open if alive
            self._loop.run_in_executor(None, self._close_blocking, conn, ids)  # type: ignore[union-attr]
        for listener in list(self.listeners):
            listener.on_host_down(self, reason)
        self._retry = asyncio.create_task(self._reconnect(), name=f"reconnect {self.name}")

    def keep_trying(self, reason: str) -> None:
        """It did not answer when first opened (a server start): retry in the background as
        after losing it; the listeners hear ``on_host_up`` when it answers."""
        if self.status in (HostStatus.UP, HostStatus.DOWN):
            return
        ensure_event_loop()
        self._loop = asyncio.get_running_loop()
        self.status, self.down_reason = HostStatus.DOWN, reason
        self._retry = asyncio.create_task(self._reconnect(), name=f"reconnect {self.name}")

    async def _reconnect(self) -> None:
        delay, longest = self.retry_delays
        while self.status is HostStatus.DOWN:
            await asyncio.sleep(delay)
            try:
                await self._open_within()
            except (TimeoutError, libvirt.libvirtError, OSError) as exc:
                log.debug("host %s still down: %s", self.name, exc)
                delay = min(delay * 2, longest)
                continue
            if self.status is HostStatus.DOWN:
                self._set_up()
            return

    # -- calls ------------------------------------------------------------------------------------

    @property
    def conn(self) -> libvirt.virConnect:
        if self._conn is None or self.status is not HostStatus.UP:
            why = f": {self.down_reason}" if self.down_reason else ""
            raise HostUnreachable(
                f"host {self.name} is {self.status.value}{why}; wait for it to answer again, "
                "or check its libvirtd",
                self.name,
            )
        return self._conn

    async def call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread; libvirt's errors become virtlab's, naming ``what``."""
        try:
            return await asyncio.to_thread(fn, *args)
        except libvirt.libvirtError as exc:
            raise self.error(what, exc) from exc

    def error(self, what: str, exc: libvirt.libvirtError) -> HostUnreachable | HostFailure:
        code = exc.get_error_code()
        if self.status is not HostStatus.UP or code == libvirt.VIR_ERR_NO_CONNECT:
            return HostUnreachable(
                f"host {self.name} did not answer while trying to {what}: {exc}", self.name
            )
        return HostFailure(f"libvirt on host {self.name} could not {what}: {exc}", self.name, code)

    async def info(self) -> HostInfo:
        conn = self.conn
        return await self.call("describe itself", self._info_blocking, conn)

    def _info_blocking(self, conn: libvirt.virConnect) -> HostInfo:
        _model, memory_mb, cpus, *_ = conn.getInfo()
        free = conn.getFreeMemory() // (1 << 20)
        accels = []
        for virt in ("kvm", "qemu"):
            with contextlib.suppress(libvirt.libvirtError):
                conn.getDomainCapabilities(None, "x86_64", None, virt, 0)
                accels.append(virt)
        return HostInfo(
            name=self.name, uri=self.uri, hostname=conn.getHostname(),
            libvirt_version=libvirt_version(conn.getLibVersion()),
            qemu_version=libvirt_version(conn.getVersion()), accelerators=tuple(accels),
            cpus=cpus, memory_mb=memory_mb, free_memory_mb=free,
            domains=conn.numOfDomains(),
        )  # fmt: skip
