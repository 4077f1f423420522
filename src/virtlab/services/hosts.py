"""Host use cases: add, list, show, drain and remove the machines nodes run on; placement;
nodes whose host stops answering (``unknown``) and starts again (re-adopted).

Combines the hosts table, the routing driver (one driver per host), the node service and the
event bus. The local host is a row made by migration 0006 and always answers; a libvirt host
is reached through ``connect(name, uri)``, which the runtime gives only when libvirt-python is
installed. A connection is opened at start-up for every host in the table (one that does not
answer is retried in the background and its nodes are ``unknown``), and at ``host add``.

Each time a host answers (its connection at start-up, ``host add``, a host back after an
absence), ``after_up`` runs for it: the runtime sweeps from it the base volumes of images
deleted meanwhile (``services/host_bases.py``). When a host answers again (not at start-up,
where the runtime does it for every host once the nodes are adopted), ``after_back`` runs
once its nodes are re-adopted: the checkpoint rows of its nodes are reconciled.

Placement: a node that names its host goes there; otherwise the policy (``spread``: the host
with the most room; ``pack``: the one with the least room that still fits) picks among the
hosts that answer and are not drained. Room is a host's memory less the RAM of every node
already placed there, running or not, so no host is ever promised more memory than it has.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy.orm import Session

from virtlab.catalog import Catalog, NodeRecord
from virtlab.catalog.hosts import HostRecord, HostRepository
from virtlab.catalog.nodes import NodeRepository
from virtlab.errors import Conflict, HostUnreachable, InvalidRequest, NotFound
from virtlab.names import HOST
from virtlab.nodes.driver import NodeDriver
from virtlab.nodes.router import RoutingDriver
from virtlab.nodes.state import NodeState
from virtlab.services.events import EventBus
from virtlab.services.node_settings import NodeSettings
from virtlab.services.nodes import NodeService

__all__ = ["HOST_NAME_RULE", "Connector", "HostService", "HostView", "choose", "host_uri"]

log = logging.getLogger("virtlab.hosts")

HOST_NAME_RULE = HOST.rule
SCHEMES = ("qemu+tls", "qemu+ssh", "qemu+tcp")
Connector = Callable[[str, str, float], Awaitable[tuple[NodeDriver, dict[str, Any]]]]
"""``(name, uri, timeout)`` → the host's driver (connected) and its facts; raises
:class:`HostUnreachable` saying why when the host does not answer."""


@dataclass(frozen=True)
class HostView:
    """A host as the API and CLI show it: the row, whether it answers now, its nodes."""

    record: HostRecord
    reachable: bool
    nodes: int
    ram_promised_mb: int
    reason: str = ""  # why it does not answer

    @property
    def room_mb(self) -> int:
        return int(self.record.facts.get("memory_mb", 0)) - self.ram_promised_mb


def choose(views: list[HostView], ram_mb: int, policy: str) -> str | None:
    """Among hosts that may take a node of ``ram_mb``: ``spread`` picks the one with the most
    room, ``pack`` the one with the least room that still fits (ties: the local host, then by
    name); None when none fits."""
    fits = [v for v in views if v.room_mb >= ram_mb]
    if not fits:
        return None
    sign = -1 if policy == "spread" else 1
    return min(
        fits, key=lambda v: (sign * v.room_mb, not v.record.local, v.record.name)
    ).record.name


def validate_host_name(name: str) -> str:
    return HOST.check(name)  # virtlab.names: the same rule as node and lab names


def host_uri(uri: str, tls_cert: str | None = None) -> str:
    """The URI checked (a remote libvirt URI of a scheme virtlab supports), with ``tls_cert``
    (a folder holding cacert.pem, clientcert.pem, clientkey.pem) as libvirt's ``pkipath``."""
    parts = urlsplit(uri)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise InvalidRequest(
            f"invalid host URI {uri!r}: expected qemu+tls://HOST/system (client certificate), "
            "qemu+ssh://USER@HOST/system or qemu+tcp://HOST:PORT/system (tests only)"
        )
    if tls_cert is None:
        return uri
    if parts.scheme != "qemu+tls":
        raise InvalidRequest(f"--tls-cert is for qemu+tls:// URIs, not {parts.scheme}://")
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "pkipath"]
    query.append(("pkipath", tls_cert))
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


@dataclass
class HostService:
    catalog: Catalog
    nodes: NodeService
    router: RoutingDriver
    local_facts: Callable[[], dict[str, Any]]
    connect: Connector | None = None  # None: libvirt-python is not installed
    placement: Literal["spread", "pack"] = "spread"
    open_timeout: float = 30.0
    events: EventBus | None = None
    after_up: Callable[[str], Awaitable[object]] | None = None  # a host answers (again)
    after_back: Callable[[str], Awaitable[object]] | None = None  # …again, its nodes adopted
    _reasons: dict[str, str] = field(default_factory=dict)  # host -> why it does not answer
    _changes: asyncio.Lock = field(default_factory=asyncio.Lock)  # host_changed's row, in order

    def __post_init__(self) -> None:
        self.nodes.place = self.place
        self.nodes.reachable = self.router.reachable

    # -- reading --------------------------------------------------------------------------------

    def _record(self, name: str) -> HostRecord:
        with self.catalog.session() as session:
            record = HostRepository(session).get(name)
        if record is None:
            raise NotFound(f"no host {name!r}; `virtlab host list` shows the hosts")
        return record

    def _view(self, record: HostRecord, counts: dict[str, int], ram: dict[str, int]) -> HostView:
        if record.local:
            record = HostRecord(record.name, record.uri, "up", record.created_at,
                                self.local_facts(), record.drained)  # fmt: skip
        up = self.router.reachable(record.name)
        return HostView(record, up, counts.get(record.name, 0), ram.get(record.name, 0),
                        "" if up else self._reasons.get(record.name, "not connected"))  # fmt: skip

    def list(self) -> list[HostView]:
        with self.catalog.session() as session:
            repo = HostRepository(session)
            records, counts, ram = repo.list(), repo.node_counts(), repo.ram_promised()
        return [self._view(r, counts, ram) for r in records]

    async def show(self, name: str) -> HostView:
        """One host, its facts read again from it when it answers. A host that does not answer
        that read is down from then on, as if its driver had noticed (``mark_down``): its nodes
        are ``unknown`` and its connection retried until it answers again."""
        record = self._record(name)
        driver = None if record.local else self.router.hosts.get(name)
        describe = getattr(driver, "describe", None)
        if describe is not None and self.router.reachable(name):
            try:
                facts = await asyncio.wait_for(describe(), self.open_timeout)
            except (TimeoutError, HostUnreachable) as exc:
                reason = (
                    f"its facts could not be read: {exc}" if str(exc) else
                    f"it did not answer within {self.open_timeout:g} s when its facts were read"
                )  # fmt: skip
                self._reasons[name] = f"{reason}; retrying in the background, check its libvirtd"
                mark_down = getattr(driver, "mark_down", None)
                if mark_down is not None:
                    mark_down(self._reasons[name])
            else:
                await self.catalog.write(
                    lambda session: HostRepository(session).update(name, facts=facts, state="up")
                )
        return next(v for v in self.list() if v.record.name == name)

    # -- start-up -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open a connection to every libvirt host in the table (at once, not one by one)."""
        with self.catalog.session() as session:
            records = [r for r in HostRepository(session).list() if not r.local]
        if records and self.connect is None:
            for record in records:
                self._reasons[record.name] = "libvirt-python is not installed on this server"
                log.warning("host %s: libvirt-python is not installed (pip install "
                            "virtlab[libvirt]); its nodes are unknown", record.name)  # fmt: skip
            return
        await asyncio.gather(*(self._open(record) for record in records))

    async def _open(self, record: HostRecord) -> None:
        assert self.connect is not None
        driver, facts = await self.connect(record.name, record.uri, self.open_timeout)
        self._attach(record.name, driver)
        if facts:
            await self.catalog.write(
                lambda session: HostRepository(session).update(record.name, facts=facts, state="up")
            )
            await self._answered(record.name)
        else:
            self._reasons[record.name] = getattr(driver, "down_reason", "") or "not answering"
            log.warning("host %s does not answer: %s", record.name, self._reasons[record.name])

    def _attach(self, name: str, driver: NodeDriver) -> None:
        driver.on_host_change = self.host_changed  # type: ignore[attr-defined]
        self.router.add_host(name, driver)

    async def _answered(self, name: str) -> None:
        if self.after_up is not None:
            await self.after_up(name)

    # -- changes --------------------------------------------------------------------------------

    async def add(self, name: str, uri: str, tls_cert: str | None = None) -> HostView:
        validate_host_name(name)
        uri = host_uri(uri, tls_cert)
        with self.catalog.session() as session:  # refused at once, before connecting …
            _refuse_taken(HostRepository(session), name, uri)
        if self.connect is None:
            raise Conflict(
                "this server cannot reach libvirt hosts: libvirt-python is not installed; "
                "install it (`pip install virtlab[libvirt]`, needs libvirt-dev) and restart"
            )
        driver, facts = await self.connect(name, uri, self.open_timeout)
        if not facts:  # it did not answer: nothing is kept
            reason = getattr(driver, "down_reason", "")
            await driver.close()
            raise HostUnreachable(
                f"cannot add host {name}: {reason}. Check that libvirtd runs there and listens "
                "(libvirtd -l, or libvirtd-tls.socket), that a firewall lets this server reach "
                "its port (16514 for TLS, 16509 for TCP), and for TLS that --tls-cert names a "
                "folder with cacert.pem, clientcert.pem and clientkey.pem the host accepts",
                name,
            )
        record = HostRecord(name, uri, "up", datetime.now(UTC), facts)

        def insert(session: Session) -> None:  # … and again with the insert: two adds at once
            repo = HostRepository(session)
            _refuse_taken(repo, name, uri)
            repo.add(record)

        try:
            await self.catalog.write(insert)
        except BaseException:
            await driver.close()
            raise
        self._attach(name, driver)
        await self._answered(name)
        self._publish(name, "added")
        return next(v for v in self.list() if v.record.name == name)

    async def remove(self, name: str) -> HostRecord:
        record = self._record(name)
        if record.local:
            raise Conflict("the local host cannot be removed; drain it to keep new nodes off it")

        def remove_row(session: Session) -> None:  # no node placed there in between
            nodes = [n.name for n in NodeRepository(session).on_host(name)]
            if nodes:
                raise Conflict(
                    f"host {name} has {len(nodes)} node(s): {', '.join(nodes)}; drain it "
                    f"(`virtlab host drain {name}`) so no new node goes there, then delete its "
                    "nodes, then remove it"
                )
            HostRepository(session).remove(name)

        await self.catalog.write(remove_row)
        await self.router.remove_host(name)
        self._reasons.pop(name, None)
        self._publish(name, "removed")
        return record

    def drain(self, name: str, drained: bool = True) -> HostView:
        self._record(name)
        with self.catalog.session() as session:
            HostRepository(session).update(name, drained=drained)
        self._publish(name, "drained" if drained else "undrained")
        return next(v for v in self.list() if v.record.name == name)

    def _publish(self, name: str, change: str) -> None:
        if self.events is not None:
            view = next((v for v in self.list() if v.record.name == name), None)
            state = "removed" if view is None else ("up" if view.reachable else "down")
            self.events.publish("host", name=name, change=change, state=state)

    # -- placement ------------------------------------------------------------------------------

    def place(self, settings: NodeSettings) -> str:
        """The host a new node goes to; refused, saying why, when none can take it."""
        views = self.list()
        if settings.host is not None:
            view = next((v for v in views if v.record.name == settings.host), None)
            if view is None:
                raise NotFound(f"no host {settings.host!r}; `virtlab host list` shows the hosts")
            if view.record.drained:
                raise Conflict(f"host {settings.host} is drained: it takes no new nodes; "
                               "choose another host, or undrain it")  # fmt: skip
            if not view.reachable:
                why = f"host {settings.host} does not answer ({view.reason})"
                raise HostUnreachable(f"{why}; wait for it, or choose another host", settings.host)
            if view.room_mb < settings.ram_mb:
                raise Conflict(self._no_room(settings, [view]))
            return view.record.name
        open_ = [v for v in views if v.reachable and not v.record.drained]
        chosen = choose(open_, settings.ram_mb, self.placement)
        if chosen is None:
            raise Conflict(self._no_room(settings, open_))
        return chosen

    @staticmethod
    def _no_room(settings: NodeSettings, views: list[HostView]) -> str:
        rooms = ", ".join(f"{v.record.name} {max(v.room_mb, 0)} MB" for v in views) or "none"
        return (
            f"no host has room for node {settings.name} ({settings.ram_mb} MB of RAM): room left "
            f"on hosts that answer and are not drained: {rooms}; delete nodes, lower ram_mb, "
            "or add a host (`virtlab host add`)"
        )

    # -- a host that stops answering, and answers again ---------------------------------------

    async def host_changed(self, host: str, up: bool, node_ids: list[str]) -> None:
        """From a host's driver: its nodes are ``unknown`` while it does not answer; when it
        answers again, they are what libvirt says (the driver re-adopted those it kept).

        The host's row is written in a worker thread; changes of hosts are written one at a
        time, in the order they came, so a host that goes down and up again at once ends up."""
        down = "" if up else getattr(self.router.hosts.get(host), "down_reason", "")

        def mark(session: Session) -> list[NodeRecord]:
            records = NodeRepository(session).on_host(host)
            HostRepository(session).update(host, state="up" if up else "down")
            return records

        async with self._changes:
            records = await self.catalog.write(mark)
            # The reason is kept before the event goes out: whoever reads the host on hearing
            # it (the web UI's Hosts page) gets why, whether or not the host has nodes.
            if up:
                self._reasons.pop(host, None)
            else:
                self._reasons[host] = down or "it stopped answering"
                self._publish(host, "down")
        for record in records:
            state = NodeState(record.state)
            if not up and record.id in node_ids:
                why = f"host {host} does not answer; its nodes are re-adopted when it does"
                await self.nodes.set_state(record.id, NodeState.UNKNOWN, why)
            elif up and state is NodeState.UNKNOWN and record.id in node_ids:
                await self.nodes.set_state(record.id, self.router.state(record.id), "")
            elif up and state is NodeState.UNKNOWN:
                await self.nodes.adopt_one(record, "it ended while its host did not answer")
        if up:  # then the event: whoever waits for it sees the host swept and reconciled
            await self._answered(host)
            if self.after_back is not None:
                await self.after_back(host)
            self._publish(host, "up")


def _refuse_taken(repo: HostRepository, name: str, uri: str) -> None:
    if repo.get(name) is not None:
        raise Conflict(f"there is a host named {name} already; choose another name")
    same = repo.by_uri(uri)
    if same is not None:
        raise Conflict(f"host {same.name} has that URI already ({uri})")
