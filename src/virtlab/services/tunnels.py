"""Links with an end on a libvirt host: UDP tunnels, straight between hosts or via the server.

A link between two nodes of the local host stays a pair of symlinks (``virtlab.links.wiring``).
A link with an end on a libvirt host is a UDP tunnel at that end: the node's NIC binds a port
on its own host's address and sends to a peer. Host ports are allocated per host address from
``Settings.tunnel_ports`` and kept on the link's row (``a_port``, ``b_port``; ``None`` for an
end on the local host), so a node starts with the same tunnel every time.

The peer is one of two things, the link's *path*:

- **tunnel**: both ends on libvirt hosts, each sending straight to the other's host port;
- **relayed**: the tunnel leads to a UDP port of the server (``Settings.relay_ports``, kept as
  ``a_relay_port`` / ``b_relay_port``), where the link's relay forwards, captures and impairs
  (:mod:`virtlab.links.ends`). A link to a local node is always relayed (its other end is a
  unix socket on the server); a link between hosts is relayed when asked (``relayed``, or
  ``Settings.tunnels_via_server``), or once it is captured or impaired while its ends are
  stopped.

The server's address as a host sees it is ``Settings.relay_address``; unset, it is the loopback
address for a host on a loopback address (the host is this machine), and unknown otherwise.

libvirt 9.0 cannot re-cable a running domain's UDP NIC: a tunnel is part of a node's definition
when it starts, so adding a link to a running node on a libvirt host, or re-routing one, is
refused (stop it first); down/up is live (the NIC's link state).
"""

from __future__ import annotations

import ipaddress
import logging

from virtlab.catalog import Catalog, NodeRecord, NodeRepository
from virtlab.catalog.hosts import HostRepository
from virtlab.catalog.labs import LinkRecord, LinkRepository
from virtlab.errors import Conflict, InsufficientStorage
from virtlab.links.ends import UdpEndpoint
from virtlab.nodes.ports import PortRange
from virtlab.nodes.spec import LOCAL_HOST, UdpTunnel
from virtlab.nodes.state import NodeState
from virtlab.settings import is_loopback

__all__ = ["RUNNING", "Tunnels"]

log = logging.getLogger("virtlab.links")

RUNNING = (NodeState.STARTING, NodeState.RUNNING, NodeState.SUSPENDED, NodeState.STOPPING)
SETTING = "VIRTLAB_RELAY_ADDRESS"


class Tunnels:
    def __init__(
        self, catalog: Catalog, ports: PortRange, *, relay_ports: PortRange | None = None,
        relay_address: str | None = None, via_server: bool = False,
    ) -> None:  # fmt: skip
        self.catalog = catalog
        self.ports = ports
        self.relay_ports = relay_ports or PortRange(41000, 41999)
        self.relay_address = relay_address
        self.via_server = via_server  # new links between hosts go through the server

    @staticmethod
    def needed(a: NodeRecord, b: NodeRecord) -> bool:
        """Whether a link between ``a`` and ``b`` has a tunnel (not both on the local host)."""
        return a.host != LOCAL_HOST or b.host != LOCAL_HOST

    def relayed(self, a: NodeRecord, b: NodeRecord, asked: bool) -> bool:
        """Whether a new link between ``a`` and ``b`` goes through the server's relay."""
        return asked or self.via_server or LOCAL_HOST in (a.host, b.host)

    def check(self, a: NodeRecord, b: NodeRecord, relayed: bool) -> None:
        """Refuse, saying why, a tunnel this server cannot make now."""
        running = [n for n in (a, b) if n.host != LOCAL_HOST and NodeState(n.state) in RUNNING]
        if running:
            names = " and ".join(n.name for n in running)
            raise Conflict(
                f"cannot add a link to {names} now: libvirt cannot re-cable the UDP NIC of a "
                f"running node on a libvirt host; stop {names}, add the link, then start "
                "them again"
            )
        if relayed:
            for node in (a, b):
                if node.host != LOCAL_HOST:
                    self._server_address(node, a if node is b else b)

    def server_address(self, host: str) -> str | None:
        """The server's address as ``host`` sees it, or ``None`` if it is not known."""
        if self.relay_address:
            return self.relay_address
        with self.catalog.session() as session:
            where = _address(HostRepository(session), host)
        if is_loopback(where):
            return "::1" if ipaddress.ip_address(where).version == 6 else "127.0.0.1"
        return None

    def _server_address(self, node: NodeRecord, other: NodeRecord) -> str:
        found = self.server_address(node.host)
        if found is None:
            with self.catalog.session() as session:
                where = _address(HostRepository(session), node.host)
            raise Conflict(
                f"cannot link {node.name} (on host {node.host}, {where}) to {other.name} through "
                f"this server: the server does not know its own address as {node.host} sees it "
                f"(only hosts on a loopback address get one by default); set {SETTING} to the "
                f"server's address on {node.host}'s network and restart the server"
                + (", or link nodes that are both on libvirt hosts without relayed"
                   if other.host != LOCAL_HOST else "")
            )  # fmt: skip
        return found

    # -- ports ----------------------------------------------------------------------------------

    def allocate(self, a: NodeRecord, b: NodeRecord, relayed: bool) -> dict[str, int | None]:
        """Ports of a new link: each host end's port on its host (two different ones on one
        host), and the server's port for each host end when relayed. Ports are per address:
        hosts that share one (as in tests) share its ports."""
        ports: dict[str, int | None] = {
            "a_port": None, "b_port": None, "a_relay_port": None, "b_relay_port": None,
        }  # fmt: skip
        used = self._in_use()
        with self.catalog.session() as session:
            hosts = HostRepository(session)
            for side, node in (("a", a), ("b", b)):
                if node.host != LOCAL_HOST:
                    where = _address(hosts, node.host)
                    port = ports[f"{side}_port"] = _free(self.ports, where, used)
                    used.setdefault(where, set()).add(port)
        if relayed:
            ports.update(self.allocate_relay(a, b))
        return ports

    def allocate_relay(self, a: NodeRecord, b: NodeRecord) -> dict[str, int | None]:
        """The server's ports for the host ends of a link between ``a`` and ``b``."""
        taken = self._relay_in_use()
        out: dict[str, int | None] = {"a_relay_port": None, "b_relay_port": None}
        for side, node in (("a", a), ("b", b)):
            if node.host != LOCAL_HOST:
                port = out[f"{side}_relay_port"] = _free(
                    self.relay_ports, "this server", {"this server": taken},
                    setting="VIRTLAB_RELAY_PORTS",
                )  # fmt: skip
                taken.add(port)
        return out

    def _in_use(self) -> dict[str, set[int]]:
        """Tunnel ports taken, by host address."""
        with self.catalog.session() as session:
            links = [x for x in LinkRepository(session).list() if x.tunnel]
            hosts = HostRepository(session)
            where = {r.name: str(r.facts.get("address", r.name)) for r in hosts.list()}
            nodes = {n.id: where.get(n.host, n.host) for n in NodeRepository(session).list()}
        used: dict[str, set[int]] = {}
        for link in links:
            for node_id, port in ((link.a_node, link.a_port), (link.b_node, link.b_port)):
                if port is not None:
                    used.setdefault(nodes.get(node_id, ""), set()).add(port)
        return used

    def _relay_in_use(self) -> set[int]:
        with self.catalog.session() as session:
            links = LinkRepository(session).list()
        return {p for x in links for p in (x.a_relay_port, x.b_relay_port) if p is not None}

    # -- what each side sees ----------------------------------------------------------------------

    def of(self, node: NodeRecord) -> dict[int, UdpTunnel]:
        """The tunnels of a node's NICs, by NIC index, as its host sees them."""
        with self.catalog.session() as session:
            links = [x for x in LinkRepository(session).of_node(node.id) if x.tunnel]
            nodes = NodeRepository(session)
            hosts = HostRepository(session)
            out = {}
            for link in links:
                mine_a = link.a_node == node.id
                other = nodes.get(link.b_node if mine_a else link.a_node)
                if other is None:
                    continue
                here = _address(hosts, node.host)
                index = link.a_iface if mine_a else link.b_iface
                port = link.a_port if mine_a else link.b_port
                relay_port = link.a_relay_port if mine_a else link.b_relay_port
                if relay_port is not None:
                    server = self.server_address(node.host)
                    if server is None:  # the setting was unset since: the NIC stays unplugged
                        log.warning(
                            "eth%s of %s stays unplugged: its link goes through the server, "
                            "whose address on host %s is not known; set %s", index, node.name,
                            node.host, SETTING,
                        )  # fmt: skip
                        continue
                    out[index] = UdpTunnel(here, port, server, relay_port)  # type: ignore[arg-type]
                else:
                    there = _address(hosts, other.host)
                    peer = link.b_port if mine_a else link.a_port
                    out[index] = UdpTunnel(here, port, there, peer)  # type: ignore[arg-type]
        return out

    def relay_side(self, link: LinkRecord, side: str) -> UdpEndpoint:
        """What the relay of ``link`` binds and sends to for its host end ``side`` (a or b)."""
        node_id = link.a_node if side == "a" else link.b_node
        port = link.a_port if side == "a" else link.b_port
        relay_port = link.a_relay_port if side == "a" else link.b_relay_port
        with self.catalog.session() as session:
            node = NodeRepository(session).get(node_id)
            if node is None:
                raise Conflict(f"node {node_id} of link {link.id} no longer exists")
            where = _address(HostRepository(session), node.host)
        server = self.server_address(node.host)
        if server is None or port is None or relay_port is None:
            raise Conflict(
                f"the relay of link {link.id} cannot reach {node.name} on host {node.host}: "
                f"the server's address there is not known; set {SETTING} and restart the server"
            )
        return UdpEndpoint(server, relay_port, where, port)


def _free(
    ports: PortRange, address: str, used: dict[str, set[int]],
    setting: str = "VIRTLAB_TUNNEL_PORTS",
) -> int:  # fmt: skip
    taken = used.get(address, set())
    for port in ports:
        if port not in taken:
            return port
    raise InsufficientStorage(
        f"no free tunnel port left in {ports} on {address}; remove links there, or widen {setting}"
    )


def _address(hosts: HostRepository, name: str) -> str:
    record = hosts.get(name)
    address = record.facts.get("address") if record else None
    if not address:
        raise Conflict(f"host {name}'s address is not known yet; wait until it answers")
    return str(address)
