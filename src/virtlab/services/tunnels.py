"""Links of nodes on libvirt hosts: UDP tunnels between the hosts' addresses.

A link between two nodes of the local host stays a pair of symlinks (``virtlab.links.wiring``).
A link whose ends are on libvirt hosts (the same one or two) is a UDP tunnel: each end's NIC
binds a port on its own host's address and sends to the other end's. Ports are allocated per
host address from ``Settings.tunnel_ports`` and kept on the link's row (``a_port``,
``b_port``), so a node starts with the same tunnel every time. libvirt 9.0 cannot re-cable a
running domain's UDP NIC: a tunnel is part of a node's definition when it starts, so adding
one to a running node is refused (stop it, add the link, start it); down/up is live (the
NIC's link state).
"""

from __future__ import annotations

from virtlab.catalog import Catalog, NodeRecord, NodeRepository
from virtlab.catalog.hosts import HostRepository
from virtlab.catalog.labs import LinkRepository
from virtlab.errors import Conflict, InsufficientStorage
from virtlab.nodes.ports import PortRange
from virtlab.nodes.spec import LOCAL_HOST, UdpTunnel
from virtlab.nodes.state import NodeState

__all__ = ["Tunnels"]

_ACTIVE = (NodeState.STARTING, NodeState.RUNNING, NodeState.SUSPENDED, NodeState.STOPPING)


class Tunnels:
    def __init__(self, catalog: Catalog, ports: PortRange) -> None:
        self.catalog = catalog
        self.ports = ports

    @staticmethod
    def needed(a: NodeRecord, b: NodeRecord) -> bool:
        """Whether a link between ``a`` and ``b`` is a tunnel (not both on the local host)."""
        return a.host != LOCAL_HOST or b.host != LOCAL_HOST

    def check(self, a: NodeRecord, b: NodeRecord) -> None:
        """Refuse, saying why, a tunnel this server cannot make now."""
        if LOCAL_HOST in (a.host, b.host):
            local, remote = (a, b) if a.host == LOCAL_HOST else (b, a)
            raise Conflict(
                f"cannot link {local.name} (on this server's own host) to {remote.name} (on "
                f"host {remote.host}): links between the local host and a libvirt host are not "
                "supported yet; place both nodes on libvirt hosts"
            )
        running = [n for n in (a, b) if NodeState(n.state) in _ACTIVE]
        if running:
            names = " and ".join(n.name for n in running)
            raise Conflict(
                f"cannot add a link to {names} now: libvirt cannot re-cable the UDP NIC of a "
                f"running node on a libvirt host; stop {names}, add the link, then start "
                "them again"
            )

    def allocate(self, a: NodeRecord, b: NodeRecord) -> tuple[int, int]:
        """A free port on ``a``'s host and one on ``b``'s (two different ones on one host).
        Ports are per address: hosts that share one (as in tests) share its ports."""
        with self.catalog.session() as session:
            hosts = HostRepository(session)
            where_a, where_b = _address(hosts, a.host), _address(hosts, b.host)
        used = self._in_use()
        pa = self._free(where_a, used)
        used.setdefault(where_a, set()).add(pa)
        return pa, self._free(where_b, used)

    def _in_use(self) -> dict[str, set[int]]:
        """Tunnel ports taken, by host address."""
        with self.catalog.session() as session:
            links = [x for x in LinkRepository(session).list() if x.tunnel]
            hosts = HostRepository(session)
            where = {r.name: str(r.facts.get("address", r.name)) for r in hosts.list()}
            nodes = {n.id: where.get(n.host, n.host) for n in NodeRepository(session).list()}
        used: dict[str, set[int]] = {}
        for link in links:
            used.setdefault(nodes.get(link.a_node, ""), set()).add(link.a_port)  # type: ignore[arg-type]
            used.setdefault(nodes.get(link.b_node, ""), set()).add(link.b_port)  # type: ignore[arg-type]
        return used

    def _free(self, address: str, used: dict[str, set[int]]) -> int:
        taken = used.get(address, set())
        for port in self.ports:
            if port not in taken:
                return port
        raise InsufficientStorage(
            f"no free tunnel port left in {self.ports} on {address}; remove links there, or "
            "widen VIRTLAB_TUNNEL_PORTS"
        )

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
                here, there = _address(hosts, node.host), _address(hosts, other.host)
                ports = (link.a_port, link.b_port) if mine_a else (link.b_port, link.a_port)
                index = link.a_iface if mine_a else link.b_iface
                out[index] = UdpTunnel(here, ports[0], there, ports[1])  # type: ignore[arg-type]
        return out


def _address(hosts: HostRepository, name: str) -> str:
    record = hosts.get(name)
    address = record.facts.get("address") if record else None
    if not address:
        raise Conflict(f"host {name}'s address is not known yet; wait until it answers")
    return str(address)
