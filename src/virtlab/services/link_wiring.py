"""Where each link's frames go, made so: symlinks, relays, and which path a link takes.

A link takes one of three paths (shown as ``path`` on the API):

- ``direct``: two local nodes, kernel to kernel through symlinks;
- ``relayed``: through a relay in the server. Two local nodes switch to it while a capture, an
  impairment or a live stream needs it, and back when nothing does. A link with an end on a
  libvirt host whose tunnel leads to the server (:mod:`virtlab.services.tunnels`) is relayed for
  its whole life: its relay runs from when the link is made (or the server starts) until it is
  removed, whether its nodes run or not;
- ``tunnel``: two nodes on libvirt hosts, UDP straight from host to host; nothing of it passes
  the server.

The link service serialises calls; this module keeps the relays and the live-stream counts.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

from virtlab.catalog.labs import LinkRecord
from virtlab.errors import Conflict
from virtlab.links import (
    Endpoint,
    Impairment,
    Relay,
    UdpEndpoint,
    connect_direct,
    connect_via,
    disconnect,
    plug,
    unplug,
)
from virtlab.services.tunnels import Tunnels

__all__ = ["LinkWiring"]


class LinkWiring:
    def __init__(
        self, *, nodes_dir: Path, links_dir: Path, captures_dir: Path, tunnels: Tunnels | None
    ) -> None:
        self.nodes_dir = nodes_dir
        self.links_dir = links_dir
        self.captures_dir = captures_dir
        self.tunnels = tunnels
        self.relays: dict[str, Relay] = {}
        self.streams: Counter[str] = Counter()  # live capture streams being read, by link

    def path(self, link: LinkRecord) -> str:
        if link.via_server:
            return "relayed"
        if link.tunnel:
            return "tunnel"
        return "relayed" if link.id in self.relays else "direct"

    def needs_relay(self, link: LinkRecord) -> bool:
        return bool(
            link.via_server or link.capturing or link.impairment or self.streams[link.id] > 0
        )

    def _endpoint(self, node_id: str, index: int) -> Endpoint:
        return Endpoint(self.nodes_dir / node_id, index)

    def _sides(self, link: LinkRecord) -> tuple[Endpoint | UdpEndpoint, Endpoint | UdpEndpoint]:
        """Each end as the relay sees it: a local NIC, or the UDP tunnel of a host's node."""
        sides: list[Endpoint | UdpEndpoint] = []
        for side, (node_id, index), port in (("a", link.ends()[0], link.a_port),
                                             ("b", link.ends()[1], link.b_port)):  # fmt: skip
            if port is None:
                sides.append(self._endpoint(node_id, index))
            else:
                assert self.tunnels is not None
                sides.append(self.tunnels.relay_side(link, side))
        return sides[0], sides[1]

    def _socks(self, link: LinkRecord) -> tuple[Path, Path]:
        """The relay's unix sockets of ``link`` (the ones its local ends point at)."""
        return self.links_dir / link.id / "a.sock", self.links_dir / link.id / "b.sock"

    async def settle(self, link: LinkRecord) -> None:
        """Wire the link directly, or through a relay when something needs one."""
        if link.tunnel and not link.via_server:
            if self.needs_relay(link):
                raise Conflict(
                    f"link {link.id} goes straight between libvirt hosts: it has no relay"
                )
            return  # a UDP tunnel: part of each node's definition when it starts
        relay = self.relays.get(link.id)
        if self.needs_relay(link):
            if relay is None:
                relay = await self._start_relay(link)
            if link.capturing and relay.capture_path is None:
                relay.start_capture(self.new_capture_path(link))
            return
        a, b = (self._endpoint(n, i) for n, i in link.ends())
        if relay is not None:
            connect_direct(a, b, relay_socks=(relay.a_sock, relay.b_sock))
            await self.drop(link.id)
        else:
            connect_direct(a, b)

    async def _start_relay(self, link: LinkRecord) -> Relay:
        a, b = self._sides(link)
        relay = Relay(self.links_dir / link.id, a, b)
        await relay.start()
        self.relays[link.id] = relay
        try:
            for direction, raw in (link.impairment or {}).items():
                relay.set_impairment(direction, Impairment(**raw))
            if isinstance(a, Endpoint) and isinstance(b, Endpoint):
                connect_via(a, relay.a_sock, b, relay.b_sock)
            else:
                for side, sock in ((a, relay.a_sock), (b, relay.b_sock)):
                    if isinstance(side, Endpoint):
                        plug(side, sock)
        except BaseException:
            await self.drop(link.id)
            raise
        return relay

    async def unwire(self, link: LinkRecord) -> None:
        """Unplug the link's local ends and stop its relay (a tunnel's host ends are left to
        the caller: they are part of their nodes' definitions)."""
        relay = self.relays.get(link.id)
        socks = self._socks(link)
        if link.via_server:
            ports = (link.a_port, link.b_port)
            for (node_id, index), port, sock in zip(link.ends(), ports, socks, strict=True):
                if port is None:
                    unplug(self._endpoint(node_id, index), sock)
        elif not link.tunnel:
            a, b = (self._endpoint(n, i) for n, i in link.ends())
            disconnect(a, b, relay_socks=socks if relay else None)
        await self.drop(link.id)

    async def drop(self, link_id: str) -> None:
        relay = self.relays.pop(link_id, None)
        if relay is not None:
            await relay.stop()
            shutil.rmtree(relay.link_dir, ignore_errors=True)

    def new_capture_path(self, link: LinkRecord) -> Path:
        folder = self.captures_dir / link.id
        folder.mkdir(parents=True, exist_ok=True)
        return folder / time.strftime("%Y%m%d-%H%M%S.pcap", time.gmtime())

    async def close(self) -> None:
        for link_id in list(self.relays):
            await self.drop(link_id)
