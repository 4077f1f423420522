"""A lab as it resolves: frozen values, every setting filled in, every reference checked.

This is what the lab service deploys and what it rebuilds from the catalog to export a lab.
Nothing here depends on YAML or pydantic. A :class:`ResolvedLab` is canonical: nodes in natural
name order (``r2`` before ``r10``), links in the order of their first, then second, endpoint;
two labs are the same lab exactly when they compare equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

from virtlab.errors import NotFound
from virtlab.links.impairment import Impairment  # the relay's own value: one direction
from virtlab.nodes.spec import DiskBus, NicModel
from virtlab.topology.model import LinkState, Proto

__all__ = [
    "BUILTIN_DEFAULTS",
    "FORWARD_HOST",
    "NODE_SETTINGS",
    "Endpoint",
    "Impairment",
    "LinkState",
    "NatSpec",
    "PortForward",
    "Position",
    "Proto",
    "ResolvedLab",
    "ResolvedLink",
    "ResolvedNode",
    "natural_key",
]

FORWARD_HOST = "127.0.0.1"  # where every port forward listens


def natural_key(text: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key: ``r2`` before ``r10``, numbers before letters; a total order (ties, such as
    ``r01`` and ``r1``, broken by the text itself)."""
    parts = re.split(r"(\d+)", text)
    return (
        *((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p),
        (2, 0, text),
    )


@dataclass(frozen=True)
class PortForward:
    """``FORWARD_HOST:host_port`` on the virtlab host reaches ``guest_port`` in the guest."""

    proto: Proto
    host_port: int
    guest_port: int

    def __str__(self) -> str:
        return f"{self.proto}:{FORWARD_HOST}:{self.host_port}->{self.guest_port}"


@dataclass(frozen=True)
class NatSpec:
    """A QEMU user-mode network (``-netdev user``): its host port forwards, and whether the
    guest may reach out through the host (``restrict=True``: it may not; nothing leaves)."""

    forwards: tuple[PortForward, ...] = ()
    restrict: bool = True


@dataclass(frozen=True)
class Position:
    x: float
    y: float


@dataclass(frozen=True)
class ResolvedNode:
    """One node with every setting decided (node > kind > defaults > builtin defaults).

    A plain node (kind ``linux`` or a kind of the file) is a QEMU machine on ``image``. A nat
    node (``nat`` is set) is no machine: it has one NIC, ``eth0``, and the node linked to it gets
    QEMU user networking on that NIC, with ``nat``'s forwards; its machine settings keep their
    builtin defaults and mean nothing. ``management``, on a plain node, is one more NIC of user
    networking, not counted in ``nics`` (so ``ethN`` of links stay as written).
    """

    name: str
    kind: str = "linux"
    image: str | None = None  # None only on a nat node
    cpus: int = 1
    ram_mb: int = 256
    disk_bus: DiskBus = DiskBus.VIRTIO
    nics: int = 1
    nic_model: NicModel = NicModel.VIRTIO
    disk_size_mb: int | None = None
    serial: bool = True
    vnc: bool = True
    extra_args: tuple[str, ...] = ()
    host: str | None = None  # placement hint for multi-host labs; unused on one host
    management: NatSpec | None = None
    position: Position | None = None
    nat: NatSpec | None = None  # set on a nat node, and only there

    @property
    def is_nat(self) -> bool:
        return self.nat is not None

    @property
    def interfaces(self) -> tuple[str, ...]:
        return tuple(f"eth{i}" for i in range(self.nics))


# The settings that defaults, kinds and nodes share, and their builtin values.
NODE_SETTINGS: tuple[str, ...] = (
    "image", "cpus", "ram_mb", "disk_bus", "nics", "nic_model", "disk_size_mb", "serial", "vnc",
    "extra_args", "host", "management",
)  # fmt: skip
BUILTIN_DEFAULTS = {f.name: f.default for f in fields(ResolvedNode) if f.name in NODE_SETTINGS}


@dataclass(frozen=True, order=True)
class Endpoint:
    """One end of a link: NIC ``nic`` (``eth<nic>``) of node ``node``."""

    node: str
    nic: int

    @property
    def iface(self) -> str:
        return f"eth{self.nic}"

    def __str__(self) -> str:
        return f"{self.node}:eth{self.nic}"

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """``"r1:eth1"`` → ``Endpoint("r1", 1)`` (the syntax is checked by the model)."""
        node, _, iface = text.rpartition(":")
        return cls(node, int(iface.removeprefix("eth")))


@dataclass(frozen=True)
class ResolvedLink:
    """A link from ``a`` to ``b``; ``a_to_b`` impairs the frames ``a`` sends to ``b``.

    Impairments are :class:`virtlab.links.impairment.Impairment`, what the relay applies:
    ``Impairment()`` is a plain cable, ``rate_kbps=0`` is unlimited.
    """

    a: Endpoint
    b: Endpoint
    state: LinkState = LinkState.UP
    a_to_b: Impairment = field(default_factory=Impairment)
    b_to_a: Impairment = field(default_factory=Impairment)
    relayed: bool = False  # between libvirt hosts: through the server, not host to host

    @property
    def endpoints(self) -> tuple[Endpoint, Endpoint]:
        return (self.a, self.b)

    @property
    def impaired(self) -> bool:
        return not (self.a_to_b.is_none and self.b_to_a.is_none)

    def sort_key(self) -> tuple[object, ...]:
        return (natural_key(self.a.node), self.a.nic, natural_key(self.b.node), self.b.nic)


@dataclass(frozen=True)
class ResolvedLab:
    name: str
    nodes: tuple[ResolvedNode, ...] = ()
    links: tuple[ResolvedLink, ...] = ()

    def node(self, name: str) -> ResolvedNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise NotFound(f"lab {self.name} has no node {name!r}")

    def canonical(self) -> ResolvedLab:
        """The same lab in canonical order (see the module's docstring)."""
        return ResolvedLab(
            self.name,
            tuple(sorted(self.nodes, key=lambda n: natural_key(n.name))),
            tuple(sorted(self.links, key=ResolvedLink.sort_key)),
        )
