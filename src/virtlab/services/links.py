"""Link use cases: add, remove, set down/up, impair, capture (to a file and live).

A plain link is direct (two symlinks, kernel to kernel; see ``virtlab.links.wiring``). A link
that is captured, impaired or streamed goes through a relay; when none of that is needed any
more it goes back to direct. Changes to wiring are serialised by one lock; nodes may run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

from virtlab.catalog import Catalog, NodeRecord, NodeRepository
from virtlab.catalog.labs import LinkRecord, LinkRepository
from virtlab.errors import Conflict, InvalidRequest, NotFound
from virtlab.links import Endpoint, Impairment, Relay, connect_direct, connect_via, disconnect
from virtlab.names import ENDPOINT
from virtlab.nodes.state import NodeState
from virtlab.services.events import EventBus
from virtlab.services.nodes import NodeService
from virtlab.services.tunnels import Tunnels

__all__ = ["LinkService", "parse_endpoint"]

log = logging.getLogger("virtlab.links")

_ENDPOINT = re.compile(r"^(?P<node>[^:]+):eth(?P<index>\d{1,2})$")  # once ENDPOINT passed
_DIRECTIONS = ("a_to_b", "b_to_a")
_NO_RELAY = (
    "links of nodes on libvirt hosts are UDP tunnels without a relay: they cannot be captured "
    "or impaired yet; capture or impair a link between nodes of the local host"
)
_RUNNING = (NodeState.STARTING, NodeState.RUNNING, NodeState.SUSPENDED, NodeState.STOPPING)


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
        self._relays: dict[str, Relay] = {}
        self._streams: Counter[str] = Counter()
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
            raise NotFound(f"no link {link_id!r}; `virtlab link list` shows the links")
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
        return self._relays.get(link_id)

    # -- changes ------------------------------------------------------------------------------

    async def add(
        self, lab: str, a: str, b: str, *, state: str = "up", impairment: dict | None = None,
    ) -> LinkRecord:  # fmt: skip
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
        if tunnel:
            self.tunnels.check(na, nb)  # type: ignore[union-attr]
            if any(not v.is_none for v in checked.values()):
                raise Conflict(_NO_RELAY)
        record = LinkRecord(
            id=uuid.uuid4().hex[:12], lab_id=lab_id, a_node=na.id, a_iface=ia, b_node=nb.id,
            b_iface=ib, state=state, created_at=datetime.now(UTC),
            impairment={d: asdict(v) for d, v in checked.items() if not v.is_none},
        )  # fmt: skip
        async with self._lock:
            if tunnel:
                a_port, b_port = self.tunnels.allocate(na, nb)  # type: ignore[union-attr]
                record = replace(record, a_port=a_port, b_port=b_port)
            with self.catalog.session() as session:
                repo = LinkRepository(session)
                for node, index in ends:
                    taken = repo.at(node.id, index)
                    if taken is not None:
                        raise Conflict(
                            f"{node.name}:eth{index} already carries the link "
                            f"{self.describe(taken)}; an interface carries one link at most"
                        )
                repo.add(record)
            try:
                await self._settle(record)
                await self._apply_state(record)
            except BaseException:
                with self.catalog.session() as session:
                    LinkRepository(session).remove(record.id)
                raise
        self._publish(record)
        return record

    async def remove(self, link_id: str) -> LinkRecord:
        async with self._lock:
            link = self.get(link_id)
            await self._unwire(link)
            with self.catalog.session() as session:
                LinkRepository(session).remove(link.id)
        self._publish(link, deleted=True)
        return link

    async def set_state(self, link_id: str, state: str) -> LinkRecord:
        if state not in ("up", "down"):
            raise InvalidRequest(f"a link's state is up or down, not {state!r}")
        async with self._lock:
            with self.catalog.session() as session:
                link = LinkRepository(session).update(self.get(link_id).id, state=state)
            await self._apply_state(link)
        self._publish(link)
        return link

    async def set_impairment(self, link_id: str, impairment: dict | None) -> LinkRecord:
        checked = impairments(impairment)
        stored = {d: asdict(v) for d, v in checked.items() if not v.is_none}
        if stored and self.get(link_id).tunnel:
            raise Conflict(_NO_RELAY)
        async with self._lock:
            with self.catalog.session() as session:
                link = LinkRepository(session).update(self.get(link_id).id, impairment=stored)
            await self._settle(link)
            relay = self._relays.get(link.id)
            if relay is not None:
                for direction, value in checked.items():
                    relay.set_impairment(direction, value)  # type: ignore[arg-type]
        self._publish(link)
        return link

    async def start_capture(self, link_id: str) -> Path:
        if self.get(link_id).tunnel:
            raise Conflict(_NO_RELAY)
        async with self._lock:
            with self.catalog.session() as session:
                link = LinkRepository(session).update(self.get(link_id).id, capturing=True)
            await self._settle(link)
            path = self._capture_path(link)
        self._publish(link)
        return path

    async def stop_capture(self, link_id: str) -> LinkRecord:
        async with self._lock:
            with self.catalog.session() as session:
                link = LinkRepository(session).update(self.get(link_id).id, capturing=False)
            relay = self._relays.get(link.id)
            if relay is not None:
                relay.stop_capture()
            await self._settle(link)
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
        if link.tunnel:
            raise Conflict(_NO_RELAY)
        async with self._lock:
            self._streams[link.id] += 1
            await self._settle(link)
            relay = self._relays[link.id]
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
        return self._streams[link_id]

    async def _stream_ended(self, link_id: str) -> None:
        async with self._lock:
            self._streams[link_id] -= 1
            with contextlib.suppress(NotFound):  # the link was removed meanwhile
                await self._settle(self.get(link_id))

    # -- wiring -------------------------------------------------------------------------------

    def _endpoints(self, link: LinkRecord) -> tuple[Endpoint, Endpoint]:
        return (
            Endpoint(self.nodes.nodes_dir / link.a_node, link.a_iface),
            Endpoint(self.nodes.nodes_dir / link.b_node, link.b_iface),
        )

    def _needs_relay(self, link: LinkRecord) -> bool:
        return bool(link.capturing or link.impairment or self._streams[link.id] > 0)

    async def _settle(self, link: LinkRecord) -> None:
        """Wire the link directly, or through a relay when something needs one."""
        if link.tunnel:
            if self._needs_relay(link):
                raise Conflict(_NO_RELAY)
            return  # a UDP tunnel: part of each node's definition when it starts
        a, b = self._endpoints(link)
        relay = self._relays.get(link.id)
        if self._needs_relay(link):
            if relay is None:
                relay = Relay(self.links_dir / link.id, a, b)
                await relay.start()
                self._relays[link.id] = relay
                for direction, value in impairments(link.impairment).items():
                    relay.set_impairment(direction, value)  # type: ignore[arg-type]
                connect_via(a, relay.a_sock, b, relay.b_sock)
            if link.capturing and relay.capture_path is None:
                relay.start_capture(self._new_capture_path(link))
            return
        if relay is not None:
            connect_direct(a, b, relay_socks=(relay.a_sock, relay.b_sock))
            await self._drop_relay(link.id)
        else:
            connect_direct(a, b)

    async def _drop_relay(self, link_id: str) -> None:
        relay = self._relays.pop(link_id, None)
        if relay is not None:
            await relay.stop()
            shutil.rmtree(relay.link_dir, ignore_errors=True)

    async def _unwire(self, link: LinkRecord) -> None:
        if link.tunnel:  # running ends lose the carrier; the tunnel is gone at their next start
            for node_id, index in link.ends():
                if NodeState(self.node_of(node_id).state) in _RUNNING:
                    await self.nodes.driver.set_link(node_id, index, False)
            return
        a, b = self._endpoints(link)
        relay = self._relays.get(link.id)
        disconnect(a, b, relay_socks=(relay.a_sock, relay.b_sock) if relay else None)
        await self._drop_relay(link.id)

    def _new_capture_path(self, link: LinkRecord) -> Path:
        folder = self.captures_dir / link.id
        folder.mkdir(parents=True, exist_ok=True)
        return folder / time.strftime("%Y%m%d-%H%M%S.pcap", time.gmtime())

    def _capture_path(self, link: LinkRecord) -> Path:
        relay = self._relays[link.id]
        assert relay.capture_path is not None
        return relay.capture_path

    async def _apply_state(self, link: LinkRecord) -> None:
        """Carrier up or down on both NICs of running nodes (QMP set_link)."""
        for node_id, index in link.ends():
            node = self.node_of(node_id)
            if NodeState(node.state) in _RUNNING:
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
                    await self._settle(link)
                except Conflict as exc:
                    log.warning("link %s could not be wired again: %s", link.id, exc)

    async def close(self) -> None:
        for link_id in list(self._relays):
            await self._drop_relay(link_id)

    def _publish(self, link: LinkRecord, *, deleted: bool = False) -> None:
        if self.events is not None:
            self.events.publish(
                "link", id=link.id, lab=self.nodes.lab_name(link.lab_id),
                state="deleted" if deleted else link.state, capturing=link.capturing,
                impairment=link.impairment,
            )  # fmt: skip
