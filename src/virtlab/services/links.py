"""Link use cases: add, remove, set down/up, impair, capture (to a file and live).

A plain link is direct (two symlinks, kernel to kernel; see ``virtlab.links.wiring``). A link
that is captured, impaired or streamed goes through a relay; when none of that is needed any
more it goes back to direct. A link with an end on a libvirt host is a UDP tunnel there, to the
other host or to the server's relay (``virtlab.services.tunnels``; which path each link takes
is :mod:`virtlab.services.link_wiring`). Changes to wiring are serialised by one lock; nodes
may run. Rows are written through ``Catalog.write`` (a worker thread): a catalog held busy by
another writer never stalls the event loop, only the change that waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import Session

from virtlab.catalog import Catalog, NodeRecord, NodeRepository
from virtlab.catalog.labs import LinkRecord, LinkRepository
from virtlab.errors import Conflict, InvalidRequest, NotFound
from virtlab.links import Impairment, Relay
from virtlab.names import ENDPOINT
from virtlab.nodes.spec import LOCAL_HOST
from virtlab.nodes.state import NodeState
from virtlab.services.events import EventBus
from virtlab.services.link_wiring import LinkWiring
from virtlab.services.nodes import NodeService
from virtlab.services.tunnels import RUNNING, Tunnels

__all__ = ["LinkService", "parse_endpoint"]

log = logging.getLogger("virtlab.links")

_ENDPOINT = re.compile(r"^(?P<node>[^:]+):eth(?P<index>\d{1,2})$")  # once ENDPOINT passed
_DIRECTIONS = ("a_to_b", "b_to_a")


def parse_endpoint(text: str) -> tuple[str, int]:
    match = _ENDPOINT.match(ENDPOINT.check(text))
    assert match is not None
    return match["node"], int(match["index"])


def impairments(raw: dict | None) -> dict[str, Impairment]:
    """``{"a_to_b": {...}, "b_to_a": {...}}`` checked into values (missing: none)."""
    raw = raw or {}
    unknown = set(raw) - set(_DIRECTIONS)
    if unknown:
        raise InvalidRequest(f"impairment directions are a_to_b and b_to_a, not {sorted(unknown)}")
    try:
        return {d: Impairment(**(raw.get(d) or {})) for d in _DIRECTIONS}
    except TypeError as exc:
        raise InvalidRequest(f"impairment: {exc}") from exc


class LinkService:
    def __init__(
        self, *, catalog: Catalog, nodes: NodeService, links_dir: Path, captures_dir: Path,
        events: EventBus | None = None, tunnels: Tunnels | None = None,
    ) -> None:  # fmt: skip
        self.catalog = catalog
        self.tunnels = tunnels
        self.nodes = nodes
        self.links_dir = links_dir
        self.captures_dir = captures_dir
        self.events = events
        self.wiring = LinkWiring(
            nodes_dir=nodes.nodes_dir, links_dir=links_dir, captures_dir=captures_dir,
            tunnels=tunnels,
        )  # fmt: skip
        self._releases: set[asyncio.Future[None]] = set()
        self._lock = asyncio.Lock()
        nodes.after_start = self._node_started
        nodes.before_delete = self._node_deleting
        if tunnels is not None:
            nodes.tunnels_of = tunnels.of

    # -- reading ------------------------------------------------------------------------------

    def list(self, lab_id: str | None = None) -> list[LinkRecord]:
        with self.catalog.session() as session:
            return LinkRepository(session).list(lab_id)

    def get(self, link_id: str) -> LinkRecord:
        with self.catalog.session() as session:
            record = LinkRepository(session).get(link_id)
        if record is None:
            raise _missing(link_id)
        return record

    def describe(self, link: LinkRecord) -> str:
        a, b = self.node_of(link.a_node), self.node_of(link.b_node)
        return f"{a.name}:eth{link.a_iface} <-> {b.name}:eth{link.b_iface}"

    def node_of(self, node_id: str) -> NodeRecord:
        with self.catalog.session() as session:
            node = NodeRepository(session).get(node_id)
        if node is None:
            raise NotFound(f"node {node_id} of this link no longer exists")
        return node

    def relay(self, link_id: str) -> Relay | None:
        return self.wiring.relays.get(link_id)

    def path(self, link: LinkRecord) -> str:
        """direct, relayed or tunnel (see :mod:`virtlab.services.link_wiring`)."""
        return self.wiring.path(link)

    # -- changes ------------------------------------------------------------------------------

    async def add(
        self, lab: str, a: str, b: str, *, state: str = "up", impairment: dict | None = None,
        relayed: bool = False,
    ) -> LinkRecord:  # fmt: skip
        """``relayed``: a link with an end on a libvirt host goes through the server's relay
        (a link to a local node always does; between two local nodes it changes nothing)."""
        lab_id = self.nodes.lab_id(lab)
        ends = []
        for text in (a, b):
            name, index = parse_endpoint(text)
            node = self.nodes.get(f"{lab}:{name}")
            if node.lab_id != lab_id:
                raise InvalidRequest(f"{text}: {name} is not in lab {lab}")
            if index >= node.nics:
                raise InvalidRequest(
                    f"{text} does not exist: {node.name} has {node.nics} NICs"
                    + (f" (eth0-eth{node.nics - 1})" if node.nics else "")
                )
            ends.append((node, index))
        (na, ia), (nb, ib) = ends
        if (na.id, ia) == (nb.id, ib):
            raise InvalidRequest(f"a link joins two different interfaces, not {a} to itself")
        if state not in ("up", "down"):
            raise InvalidRequest(f"a link's state is up or down, not {state!r}")
        checked = impairments(impairment)
        tunnel = self.tunnels is not None and self.tunnels.needed(na, nb)
        via = False
        if self.tunnels is not None and tunnel:
            impaired = any(not v.is_none for v in checked.values())
            via = self.tunnels.relayed(na, nb, relayed or impaired)
            self.tunnels.check(na, nb, via)
        record = LinkRecord(
            id=uuid.uuid4().hex[:12], lab_id=lab_id, a_node=na.id, a_iface=ia, b_node=nb.id,
            b_iface=ib, state=state, created_at=datetime.now(UTC),
            impairment={d: asdict(v) for d, v in checked.items() if not v.is_none},
        )  # fmt: skip
        async with self._lock:
            if tunnel:
                record = replace(record, **self.tunnels.allocate(na, nb, via))  # type: ignore[union-attr]
            await self.catalog.write(lambda session: _add_row(session, record, ends))
            try:
                await self.wiring.settle(record)
                await self._apply_state(record)
            except BaseException:
                with contextlib.suppress(Exception):
                    await self.wiring.unwire(record)
                await self.catalog.write(lambda s: LinkRepository(s).remove(record.id))
                raise
        self._publish(record)
        return record

    async def remove(self, link_id: str) -> LinkRecord:
        async with self._lock:
            link = self.get(link_id)
            await self.wiring.unwire(link)
            for node_id, index in link.ends():  # a running host end loses its carrier; the
                node = self.node_of(node_id)  # tunnel is gone from its next start
                if node.host != LOCAL_HOST and NodeState(node.state) in RUNNING:
                    await self.nodes.driver.set_link(node_id, index, False)
            await self.catalog.write(lambda session: LinkRepository(session).remove(link.id))
        self._publish(link, deleted=True)
        return link

    async def set_state(self, link_id: str, state: str) -> LinkRecord:
        if state not in ("up", "down"):
            raise InvalidRequest(f"a link's state is up or down, not {state!r}")
        async with self._lock:
            link = await self._update(link_id, state=state)
            await self._apply_state(link)
        self._publish(link)
        return link

    async def set_impairment(self, link_id: str, impairment: dict | None) -> LinkRecord:
        checked = impairments(impairment)
        stored = {d: asdict(v) for d, v in checked.items() if not v.is_none}
        async with self._lock:
            link = self.get(link_id)
            if stored:
                await self._via_server(link, "impaired")
            link = await self._update(link.id, impairment=stored)
            await self.wiring.settle(link)
            relay = self.relay(link.id)
            if relay is not None:
                for direction, value in checked.items():
                    relay.set_impairment(direction, value)  # type: ignore[arg-type]
        self._publish(link)
        return link

    async def start_capture(self, link_id: str) -> Path:
        async with self._lock:
            await self._via_server(self.get(link_id), "captured")
            link = await self._update(link_id, capturing=True)
            await self.wiring.settle(link)
            path = self.relay(link.id).capture_path  # type: ignore[union-attr]
            assert path is not None
        self._publish(link)
        return path

    async def stop_capture(self, link_id: str) -> LinkRecord:
        async with self._lock:
            link = await self._update(link_id, capturing=False)
            relay = self.relay(link.id)
            if relay is not None:
                relay.stop_capture()
            await self.wiring.settle(link)
        self._publish(link)
        return link

    def capture_file(self, link_id: str) -> Path:
        """The newest capture file of the link."""
        link = self.get(link_id)
        files = sorted((self.captures_dir / link.id).glob("*.pcap"))
        if not files:
            raise NotFound(f"link {self.describe(link)} has no capture yet; start one first")
        return files[-1]

    async def stream(self, link_id: str) -> AsyncIterator[bytes]:
        """A live pcap stream of the link (global header, then frames) until the reader leaves."""
        link = self.get(link_id)
        async with self._lock:
            await self._via_server(link, "captured")
            link = self.get(link_id)
            self.wiring.streams[link.id] += 1
            try:
                await self.wiring.settle(link)
            except BaseException:
                self.wiring.streams[link.id] -= 1
                raise
            relay = self.wiring.relays[link.id]
        subscription = relay.subscribe_capture()
        try:
            async for chunk in subscription:
                yield chunk
        finally:
            subscription.close()
            # The server cancels this generator when the reader leaves, and keeps cancelling
            # every await in it: the release runs as a task of its own, shielded.
            release = asyncio.ensure_future(self._stream_ended(link.id))
            self._releases.add(release)
            release.add_done_callback(self._releases.discard)
            await asyncio.shield(release)

    def readers(self, link_id: str) -> int:
        """How many live capture streams of the link are being read."""
        return self.wiring.streams[link_id]

    async def _stream_ended(self, link_id: str) -> None:
        async with self._lock:
            self.wiring.streams[link_id] -= 1
            with contextlib.suppress(NotFound):  # the link was removed meanwhile
                await self.wiring.settle(self.get(link_id))

    # -- paths --------------------------------------------------------------------------------

    async def _via_server(self, link: LinkRecord, what: str) -> None:
        """Route a link straight between two hosts through the server from its nodes' next
        start, so it can be ``what`` (captured, impaired); refused while either runs."""
        if not link.tunnel or link.via_server or self.tunnels is None:
            return
        a, b = self.node_of(link.a_node), self.node_of(link.b_node)
        running = [n.name for n in (a, b) if NodeState(n.state) in RUNNING]
        if running:
            names = " and ".join(running)
            raise Conflict(
                f"link {self.describe(link)} cannot be {what} now: it goes straight from host "
                f"{a.host} to host {b.host} (a UDP tunnel), and libvirt cannot re-point the "
                f"tunnel of a running node through the server; stop {names} and try again (the "
                "link then goes through the server from their next start), or remove the link "
                'and add it again relayed (`virtlab link add --relayed`, "relayed": true)'
            )
        self.tunnels.check(a, b, relayed=True)
        ports = self.tunnels.allocate_relay(a, b)
        routed = await self._update(link.id, **ports)
        try:
            await self.wiring.settle(routed)
        except BaseException:
            await self._update(link.id, a_relay_port=None, b_relay_port=None)
            raise
        log.info("link %s goes through the server from now on", self.describe(link))

    async def _update(self, link_id: str, **fields: object) -> LinkRecord:
        """The link's row changed (read and written in one transaction, in a worker thread),
        as written; :class:`NotFound` when the link is gone."""

        def change(session: Session) -> LinkRecord:
            repo = LinkRepository(session)
            if repo.get(link_id) is None:
                raise _missing(link_id)
            return repo.update(link_id, **fields)

        return await self.catalog.write(change)

    async def _apply_state(self, link: LinkRecord) -> None:
        """Carrier up or down on both NICs of running nodes (QMP set_link, or the NIC's link
        state on a libvirt host)."""
        for node_id, index in link.ends():
            node = self.node_of(node_id)
            if NodeState(node.state) in RUNNING:
                await self.nodes.driver.set_link(node_id, index, link.state == "up")

    # -- node and server lifecycle ------------------------------------------------------------

    async def _node_started(self, node: NodeRecord) -> None:
        with self.catalog.session() as session:
            links = LinkRepository(session).of_node(node.id)
        for link in links:
            if link.state == "down":
                for node_id, index in link.ends():
                    if node_id == node.id:
                        await self.nodes.driver.set_link(node_id, index, False)

    async def _node_deleting(self, node: NodeRecord) -> None:
        with self.catalog.session() as session:
            links = LinkRepository(session).of_node(node.id)
        for link in links:
            await self.remove(link.id)

    async def restore(self) -> None:
        """At start-up: every link wired as its row says (a server that died while making one
        may have left it unwired), relays for the links that need one (captures continue in a
        new file)."""
        async with self._lock:
            for link in self.list():
                try:
                    await self.wiring.settle(link)
                except (Conflict, InvalidRequest, OSError) as exc:
                    log.warning("link %s could not be wired again: %s", link.id, exc)

    async def close(self) -> None:
        await self.wiring.close()

    def _publish(self, link: LinkRecord, *, deleted: bool = False) -> None:
        if self.events is not None:
            self.events.publish(
                "link", id=link.id, lab=self.nodes.lab_name(link.lab_id),
                state="deleted" if deleted else link.state, capturing=link.capturing,
                impairment=link.impairment, path=self.path(link),
            )  # fmt: skip


def _missing(link_id: str) -> NotFound:
    return NotFound(f"no link {link_id!r}; `virtlab link list` shows the links")


def _add_row(session: Session, record: LinkRecord, ends: list[tuple[NodeRecord, int]]) -> None:
    """The new link's row, refused when either interface carries a link already (checked in
    the same transaction as the insert)."""
    repo = LinkRepository(session)
    for node, index in ends:
        taken = repo.at(node.id, index)
        if taken is not None:
            raise Conflict(
                f"{node.name}:eth{index} already carries the link {_ends(session, taken)}; an "
                f"interface carries one link at most: remove that one first (`virtlab link rm "
                f"{taken.id}`) or choose another interface"
            )
    repo.add(record)


def _ends(session: Session, link: LinkRecord) -> str:
    """``a:ethN <-> b:ethM`` from within a transaction (a node gone meanwhile: its id)."""
    nodes = NodeRepository(session)
    a, b = nodes.get(link.a_node), nodes.get(link.b_node)
    return (
        f"{a.name if a else link.a_node}:eth{link.a_iface} <-> "
        f"{b.name if b else link.b_node}:eth{link.b_iface}"
    )
