"""Deploying labs: a topology file made into nodes and links, all or nothing.

Every node, disk and link a deploy makes registers its undo on a stack, and a failure half-way
unwinds the stack, so a failed deploy leaves nothing behind. Deploying the same file again
changes nothing. Limits (RAM, the owner's node quota) are checked before anything is made. A
deploy the server died in (no undo ran) is left as far as it got, with its intent recorded
(``deploy_intents``): the same file again makes what is missing and finishes it.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager, AsyncExitStack, nullcontext
from dataclasses import replace
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from virtlab.catalog.labs import LabRecord, LabRepository
from virtlab.errors import Conflict
from virtlab.names import LAB
from virtlab.nodes.spec import LOCAL_HOST
from virtlab.services.labs.running import LabRunning
from virtlab.services.nodes import NodeSettings
from virtlab.topology import NatSpec, ResolvedLab, ResolvedLink, ResolvedNode, export_yaml, load_lab

log = logging.getLogger("virtlab.labs")

__all__ = ["LabDeploy"]


class LabDeploy(LabRunning):
    """Create and deploy labs, and name at start-up the deploys a server stop cut short."""

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


def _user_net(spec: NatSpec) -> dict:
    return {
        "forwards": [[f.proto.value if hasattr(f.proto, "value") else str(f.proto),
                      f.host_port, f.guest_port] for f in spec.forwards],
        "restrict": spec.restrict,
    }  # fmt: skip


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
