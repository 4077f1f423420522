"""Reading labs: by name, listed with their nodes and links, and as a lab file again (the
catalog's lab, possibly edited through the API, resolved, exported to YAML, drawn)."""

from __future__ import annotations

from dataclasses import dataclass

from virtlab._util.faults import FaultPoint
from virtlab.catalog import Catalog, NodeRecord, NodeRepository
from virtlab.catalog.labs import LabRecord, LabRepository
from virtlab.errors import InvalidRequest, NotFound
from virtlab.links.impairment import Impairment
from virtlab.nodes.spec import LOCAL_HOST, DiskBus, NicModel
from virtlab.services.deploy_intents import DeployIntents
from virtlab.services.events import EventBus
from virtlab.services.links import LinkService
from virtlab.services.nodes import NodeService
from virtlab.topology import (
    Endpoint,
    LinkState,
    NatSpec,
    PortForward,
    Position,
    Proto,
    ResolvedLab,
    ResolvedLink,
    ResolvedNode,
    export_yaml,
    to_dot,
    to_svg,
)

__all__ = ["LabReading", "LabSummary"]


@dataclass(frozen=True)
class LabSummary:
    lab: LabRecord
    nodes: list[NodeRecord]
    links: int


class LabReading:
    """The catalog's labs as records, summaries and resolved labs; the base of ``LabService``."""

    def __init__(
        self, *, catalog: Catalog, nodes: NodeService, links: LinkService,
        events: EventBus | None = None, intents: DeployIntents, fault: FaultPoint | None = None,
    ) -> None:  # fmt: skip
        self.catalog = catalog
        self.nodes = nodes
        self.links = links
        self.events = events
        self.intents = intents
        self.fault = fault or FaultPoint()

    # -- reading ------------------------------------------------------------------------------

    def get(self, name: str) -> LabRecord:
        with self.catalog.session() as session:
            lab = LabRepository(session).by_name(name)
        if lab is None:
            raise NotFound(f"no lab named {name!r}; `virtlab lab list` shows the labs")
        return lab

    def list(self) -> list[LabSummary]:
        with self.catalog.session() as session:
            labs = LabRepository(session).list()
        return [self.summary(lab) for lab in labs]

    def names(self) -> list[str]:
        with self.catalog.session() as session:
            return [lab.name for lab in LabRepository(session).list()]

    def summary(self, lab: LabRecord) -> LabSummary:
        with self.catalog.session() as session:
            nodes = NodeRepository(session).in_lab(lab.id)
        return LabSummary(lab, nodes, len(self.links.list(lab.id)))

    # -- describing ---------------------------------------------------------------------------

    def resolved(self, lab: LabRecord) -> ResolvedLab:
        """The lab as it stands in the catalog, possibly edited by hand through the API."""
        summary = self.summary(lab)
        by_id = {n.id: n for n in summary.nodes}
        nodes = [
            ResolvedNode(
                name=n.name, kind=n.kind or "linux", image=n.image, cpus=n.cpus,
                ram_mb=n.ram_mb, disk_bus=DiskBus(n.disk_bus), nics=n.nics,
                nic_model=NicModel(n.nic_model), disk_size_mb=n.disk_size_mb, serial=n.serial,
                vnc=n.vnc, extra_args=n.extra_args,
                host=None if n.host == LOCAL_HOST else n.host,
                management=_nat_spec(n.management["mgmt"]) if "mgmt" in n.management else None,
                position=Position(n.position_x, n.position_y)
                if n.position_x is not None and n.position_y is not None else None,
            )
            for n in summary.nodes
        ]  # fmt: skip
        links = []
        for n in summary.nodes:  # NAT nodes live on as their peers' user-mode NICs
            for nic, entry in sorted(n.management.get("nat", {}).items()):
                where = entry.get("position")
                nodes.append(ResolvedNode(
                    name=entry["node"], kind="nat", nat=_nat_spec(entry),
                    position=Position(*where) if where else None,
                ))  # fmt: skip
                ends = (Endpoint(n.name, int(nic)), Endpoint(entry["node"], 0))
                a, b = (ends[1], ends[0]) if entry.get("first") else ends
                links.append(ResolvedLink(a=a, b=b))
        for link in self.links.list(lab.id):
            a, b = (
                Endpoint(by_id[link.a_node].name, link.a_iface),
                Endpoint(by_id[link.b_node].name, link.b_iface),
            )
            imp = link.impairment
            links.append(
                ResolvedLink(
                    a=a, b=b, state=LinkState(link.state),
                    a_to_b=Impairment(**imp.get("a_to_b", {})),
                    b_to_a=Impairment(**imp.get("b_to_a", {})),
                    # between two hosts' nodes; a link to a local node goes through it anyway
                    relayed=link.via_server and None not in (link.a_port, link.b_port),
                )
            )  # fmt: skip
        return ResolvedLab(lab.name, tuple(nodes), tuple(links)).canonical()

    def export(self, name: str) -> str:
        return export_yaml(self.resolved(self.get(name)))

    def graph(self, name: str, fmt: str = "svg") -> str:
        resolved = self.resolved(self.get(name))
        if fmt == "dot":
            return to_dot(resolved)
        if fmt == "svg":
            return to_svg(resolved)
        raise InvalidRequest(f"a graph is svg or dot, not {fmt!r}")

    def _publish(self, lab: LabRecord, state: str) -> None:
        if self.events is not None:
            self.events.publish("lab", id=lab.id, name=lab.name, state=state)


def _nat_spec(raw: dict) -> NatSpec:
    forwards = tuple(PortForward(Proto(p), int(h), int(g)) for p, h, g in raw.get("forwards", []))
    return NatSpec(forwards=forwards, restrict=bool(raw.get("restrict", True)))
