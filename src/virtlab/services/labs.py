"""Lab use cases: create, list, deploy from a topology file (all or nothing), start, stop,
destroy, export back to YAML, graph.

Deploy is a transaction over machines: every node, disk and link it makes registers its undo on
a stack, and a failure half-way unwinds the stack, so a failed deploy leaves nothing behind.
Deploying the same file again changes nothing. A deploy the server died in (no undo ran) is
left as far as it got, with its intent recorded (``deploy_intents``): the same file again
makes what is missing and finishes it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager, AsyncExitStack, nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from virtlab._util.faults import FaultPoint
from virtlab.catalog import Catalog, NodeRecord, NodeRepository
from virtlab.catalog.labs import DEFAULT_LAB_ID, LabRecord, LabRepository
from virtlab.errors import Conflict, InvalidRequest, NotFound
from virtlab.links.impairment import Impairment
from virtlab.names import LAB
from virtlab.nodes.spec import LOCAL_HOST, DiskBus, NicModel
from virtlab.nodes.state import NodeState
from virtlab.services.deploy_intents import DeployIntents
from virtlab.services.events import EventBus
from virtlab.services.links import LinkService
from virtlab.services.nodes import NodeService, NodeSettings
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
    load_lab,
    to_dot,
    to_svg,
)

__all__ = ["LabService", "LabSummary"]

log = logging.getLogger("virtlab.labs")

_START_CONCURRENCY = 4
_ACTIVE = (NodeState.STARTING, NodeState.RUNNING, NodeState.SUSPENDED, NodeState.STOPPING)


@dataclass(frozen=True)
class LabSummary:
    lab: LabRecord
    nodes: list[NodeRecord]
    links: int


class LabService:
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

    # -- making -------------------------------------------------------------------------------

    async def create(self, name: str, owner_id: str | None = None) -> LabRecord:
        """An empty lab; ``owner_id``: the user it belongs to (None: admins only)."""
        LAB.check(name)
        record = LabRecord(
            id=secrets.token_hex(6), name=name, created_at=datetime.now(UTC), owner_id=owner_id
        )

        def add(session: Session) -> None:
            repo = LabRepository(session)
            if repo.by_name(name) is not None:
                raise Conflict(f"a lab named {name} already exists; choose another name")
            LAB.refuse_clash(name, [lab.name for lab in repo.list()], "this server")
            repo.add(record)

        await self.catalog.write(add)
        self._publish(record, "created")
        return record

    async def deploy(
        self, text: str, *, image: str | None = None, start: bool = True,
        owner_id: str | None = None, may_touch: Callable[[LabRecord], bool] | None = None,
    ) -> tuple[LabRecord, bool]:  # fmt: skip
        """Make the lab the file describes; ``(lab, changed)``. All or nothing. A new lab
        belongs to ``owner_id``; an existing one is redeployed only if ``may_touch`` it. The
        same file again after a deploy the server died in finishes that deploy."""
        wanted = load_lab(text, image_override=image)
        with self.catalog.session() as session:
            existing = LabRepository(session).by_name(wanted.name)
        if existing is not None and may_touch is not None and not may_touch(existing):
            raise Conflict(
                f"the lab name {wanted.name} is taken (lab names are unique on this server); "
                "choose another name"
            )
        if existing is None:
            with self._limits(wanted, set(), owner_id, start) as made:
                lab = await self._deploy_new(wanted, start=start, owner_id=owner_id, made=made)
            return lab, True
        interrupted = self.intents.matches(wanted)
        if _placed_as_asked(self.resolved(existing), wanted) == wanted.canonical():
            if start:
                await self.start(existing.name)
            if interrupted:  # every node and link was made before the server died
                await self._finish(existing, wanted)
            return existing, interrupted
        if interrupted:
            have = {n.name for n in self.summary(existing).nodes}
            with self._limits(wanted, have, existing.owner_id, start) as made:
                async with AsyncExitStack() as undo:  # undoes only what this call makes
                    await self._build(existing, wanted, undo, start=start, made=made)
                    undo.pop_all()
            self._publish(existing, "deployed")
            return existing, True
        raise Conflict(
            f"lab {wanted.name} exists and differs from this file; `virtlab lab destroy "
            f"{wanted.name}` first, or edit it through the API"
        )

    def _limits(
        self, wanted: ResolvedLab, have: set[str], owner_id: str | None, start: bool
    ) -> AbstractContextManager[Callable[[], None]]:
        """Refuse up front, before anything is made, a lab that could not run (RAM) or whose
        missing nodes would pass its owner's node limit; else hold those nodes' places."""
        machines = [n for n in wanted.nodes if not n.is_nat]  # a NAT node is no machine
        missing = [n for n in machines if n.name not in have]
        what = f"lab {wanted.name} ({len(machines)} nodes)"
        if start:  # the start itself holds the RAM; a node on a libvirt host needs its host's
            here = [n for n in machines if n.host in (None, LOCAL_HOST)]
            ram = {f"{wanted.name}:{n.name}": n.ram_mb for n in here}
            self.nodes.check_ram(ram, f"{what}, {sum(ram.values())} MiB")
        return self._reserve_nodes(owner_id, len(missing), what)

    def _reserve_nodes(
        self, owner_id: str | None, count: int, what: str
    ) -> AbstractContextManager[Callable[[], None]]:
        if self.nodes.quota is None:
            return nullcontext(lambda: None)
        return self.nodes.quota.reserve(owner_id, count, what)

    async def _deploy_new(
        self, wanted: ResolvedLab, *, start: bool, owner_id: str | None, made: Callable[[], None]
    ) -> LabRecord:
        LAB.check(wanted.name)
        async with AsyncExitStack() as undo:
            self.intents.record(wanted)  # before the lab exists: a crash leaves it findable
            undo.callback(self.intents.forget, wanted.name)
            lab = await self.create(wanted.name, owner_id)
            undo.push_async_callback(self._forget_lab, lab)
            await self._build(lab, wanted, undo, start=start, made=made)
            undo.pop_all()
        self._publish(lab, "deployed")
        return lab

    async def _build(
        self, lab: LabRecord, wanted: ResolvedLab, undo: AsyncExitStack, *, start: bool,
        made: Callable[[], None],
    ) -> None:  # fmt: skip
        """Make the nodes and links of ``wanted`` that ``lab`` lacks, start it, record it."""
        have_nodes = {n.name for n in self.summary(lab).nodes}
        user_nets = _user_nets(wanted)
        for node in wanted.nodes:
            if node.is_nat or node.name in have_nodes:
                continue  # a NAT node has no machine: its linked peer gets user-mode networking
            settings = _settings(node, lab.name, user_nets.get(node.name, {}))
            record = await self.nodes.create(settings, reserved=made)
            undo.push_async_callback(self._forget_node, record.id)
            self.fault("deploy_after_node")
        names = {n.id: n.name for n in self.summary(lab).nodes}
        have_links = {
            frozenset((f"{names[k.a_node]}:eth{k.a_iface}", f"{names[k.b_node]}:eth{k.b_iface}"))
            for k in self.links.list(lab.id)
        }  # fmt: skip
        nat_names = {n.name for n in wanted.nodes if n.is_nat}
        for link in wanted.links:
            if link.a.node in nat_names or link.b.node in nat_names:
                continue  # made by the peer's user-mode NIC
            if frozenset((str(link.a), str(link.b))) in have_links:
                continue
            made = await self.links.add(
                lab.name, str(link.a), str(link.b), state=link.state.value,
                impairment=_impairment_dict(link), relayed=link.relayed,
            )  # fmt: skip
            undo.push_async_callback(self.links.remove, made.id)
            self.fault("deploy_after_link")
        if start:
            await self.start(lab.name)
        await self._finish(lab, wanted)

    async def _finish(self, lab: LabRecord, wanted: ResolvedLab) -> None:
        text = export_yaml(wanted)
        await self.catalog.write(lambda s: LabRepository(s).set_topology(lab.id, text))
        self.intents.forget(wanted.name)

    async def _forget_node(self, node_id: str) -> None:
        record = self.nodes.get(node_id)
        if NodeState(record.state) in _ACTIVE:
            await self.nodes.kill(node_id)
        await self.nodes.delete(node_id)

    async def _forget_lab(self, lab: LabRecord) -> None:
        await self.catalog.write(lambda session: LabRepository(session).remove(lab.id))

    def recover(self) -> None:
        """At start-up: forget the deploy intents of labs that were never made; name the labs
        whose deploy the server died in (the same file again finishes them)."""
        with self.catalog.session() as session:
            names = {lab.name for lab in LabRepository(session).list()}
        for name in self.intents.names():
            if name not in names:
                self.intents.forget(name)
            else:
                log.warning(
                    "the deploy of lab %s was cut short by a server stop; deploy the same file "
                    "again to finish it, or destroy the lab", name,
                )  # fmt: skip

    # -- running ------------------------------------------------------------------------------

    async def start(self, name: str) -> list[NodeRecord]:
        """Start every stopped or crashed node, a few at a time. The RAM of them all is
        promised before the first starts: if the host cannot hold it, none starts."""
        lab = self.get(name)
        gate = asyncio.Semaphore(_START_CONCURRENCY)
        todo = [
            n for n in self.summary(lab).nodes
            if NodeState(n.state) in (NodeState.STOPPED, NodeState.CRASHED)
        ]  # fmt: skip

        async def one(node: NodeRecord) -> NodeRecord:
            async with gate:
                started = await self.nodes.start(node.id)
            self.fault("lab_after_start")
            return started

        ram = {n.id: n.ram_mb for n in todo if n.host == LOCAL_HOST}  # others: their host's
        what = f"lab {lab.name} ({len(todo)} nodes, {sum(ram.values())} MiB)"
        with self.nodes.hold_ram(ram, what):
            return list(await asyncio.gather(*(one(n) for n in todo)))

    async def stop(self, name: str) -> list[NodeRecord]:
        """Stop every running node at once (ACPI power-down, then a hard stop)."""
        lab = self.get(name)
        todo = [
            n for n in self.summary(lab).nodes
            if NodeState(n.state) in (NodeState.RUNNING, NodeState.SUSPENDED, NodeState.STARTING)
        ]  # fmt: skip
        return list(await asyncio.gather(*(self.nodes.stop(n.id) for n in todo)))

    async def destroy(self, name: str) -> LabRecord:
        """Kill and delete every node and link of the lab, then the lab (``default`` stays)."""
        lab = self.get(name)
        for link in self.links.list(lab.id):
            await self.links.remove(link.id)
        for node in self.summary(lab).nodes:
            await self._forget_node(node.id)
        if lab.id != DEFAULT_LAB_ID:
            await self._forget_lab(lab)
        self.intents.forget(lab.name)
        self._publish(lab, "destroyed")
        return lab

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


def _user_net(spec: NatSpec) -> dict:
    return {
        "forwards": [[f.proto.value if hasattr(f.proto, "value") else str(f.proto),
                      f.host_port, f.guest_port] for f in spec.forwards],
        "restrict": spec.restrict,
    }  # fmt: skip


def _nat_spec(raw: dict) -> NatSpec:
    forwards = tuple(PortForward(Proto(p), int(h), int(g)) for p, h, g in raw.get("forwards", []))
    return NatSpec(forwards=forwards, restrict=bool(raw.get("restrict", True)))


def _user_nets(lab: ResolvedLab) -> dict[str, dict]:
    """Per machine node: its management NIC and the NICs linked to NAT nodes."""
    out: dict[str, dict] = {}
    for node in lab.nodes:
        if node.management is not None and not node.is_nat:
            out.setdefault(node.name, {})["mgmt"] = _user_net(node.management)
    nats = {n.name: n for n in lab.nodes if n.is_nat}
    for link in lab.links:
        for nat_end, peer, first in ((link.a, link.b, True), (link.b, link.a, False)):
            nat = nats.get(nat_end.node)
            if nat is None or nat.nat is None:
                continue
            entry = _user_net(nat.nat) | {
                "node": nat.name, "first": first,
                "position": [nat.position.x, nat.position.y] if nat.position else None,
            }  # fmt: skip
            out.setdefault(peer.node, {}).setdefault("nat", {})[str(peer.nic)] = entry
    return out


def _settings(node: ResolvedNode, lab: str, management: dict) -> NodeSettings:
    assert node.image is not None
    return NodeSettings(
        name=node.name, image=node.image, lab=lab, cpus=node.cpus, ram_mb=node.ram_mb,
        disk_bus=node.disk_bus, nics=node.nics, nic_model=node.nic_model,
        disk_size_mb=node.disk_size_mb, serial=node.serial, vnc=node.vnc,
        extra_args=node.extra_args, kind=node.kind, management=management,
        position=(node.position.x, node.position.y) if node.position else None, host=node.host,
    )  # fmt: skip


def _placed_as_asked(current: ResolvedLab, wanted: ResolvedLab) -> ResolvedLab:
    """``current`` with the host of each node the file leaves to placement left out too, so a
    placed node does not make the same file differ; likewise ``relayed`` on a link with a
    local end, which goes through the server whatever the file says."""
    asked = {n.name: n.host for n in wanted.nodes}
    nodes = tuple(
        replace(n, host=None if asked.get(n.name) is None else n.host or LOCAL_HOST)
        for n in current.nodes
    )
    on_hosts = {n.name for n in current.nodes if n.host not in (None, LOCAL_HOST)}
    relayed = {frozenset((str(x.a), str(x.b))): x.relayed for x in wanted.links}
    links = tuple(
        x if {x.a.node, x.b.node} <= on_hosts
        else replace(x, relayed=relayed.get(frozenset((str(x.a), str(x.b))), False))
        for x in current.links
    )  # fmt: skip
    return replace(current, nodes=nodes, links=links).canonical()


def _impairment_dict(link: ResolvedLink) -> dict:
    from dataclasses import asdict

    out = {}
    for direction, value in (("a_to_b", link.a_to_b), ("b_to_a", link.b_to_a)):
        if not value.is_none:
            out[direction] = asdict(value)
    return out
