"""Reading nodes: by id or name, their labs, the images they use, and the spec a driver
runs a node's machine from."""

from __future__ import annotations

import uuid
from dataclasses import replace

from sqlalchemy.orm import Session

from virtlab.catalog import ImageRecord, NodeRecord, NodeRepository
from virtlab.catalog.images import ImageRepository
from virtlab.catalog.labs import LabRepository
from virtlab.errors import InvalidRequest, NotFound
from virtlab.images.formats import ImageKind
from virtlab.nodes.spec import LOCAL_HOST, DiskBus, NodeSpec, RunPaths
from virtlab.nodes.state import Action, NodeState, guard
from virtlab.services.node_settings import nic_specs
from virtlab.services.nodes.base import NodeBase

__all__ = ["NodeReading"]

_UUID_NAMESPACE = uuid.UUID("6f1f6a2e-7c1a-4d0e-9a5e-0b7a1a5e1ab0")


class NodeReading(NodeBase):
    def list(self) -> list[NodeRecord]:
        with self.catalog.session() as session:
            return NodeRepository(session).list()

    def get(self, ref: str) -> NodeRecord:
        """A node by id, by ``LAB:NAME`` (or ``LAB/NAME``), or by a name no other lab uses."""
        with self.catalog.session() as session:
            return _find(session, ref)

    def with_image(self, ref: str) -> tuple[NodeRecord, ImageRecord]:
        """A node (as :meth:`get` finds it) and its image's record, read in one session."""
        with self.catalog.session() as session:
            record = _find(session, ref)
            image = ImageRepository(session).get(record.image)
        if image is None:
            raise NotFound(
                f"node {record.name}'s image {record.image} is not in the catalog; "
                "`virtlab image list` shows the catalog"
            )
        return record, image

    def lab_id(self, lab: str) -> str:
        with self.catalog.session() as session:
            record = LabRepository(session).by_name(lab) or LabRepository(session).get(lab)
        if record is None:
            raise NotFound(f"no lab named {lab!r}; `virtlab lab list` shows the labs")
        return record.id

    def users_of(self, image: str) -> list[str]:
        with self.catalog.session() as session:
            return NodeRepository(session).using_image(image)

    async def _transition(self, ref: str, action: Action) -> NodeRecord:
        record = self.get(ref)
        guard(record.name, NodeState(record.state), action)
        return record

    def spec(self, record: NodeRecord, image: ImageRecord | None = None) -> NodeSpec:
        """``image``: the node's image record, when the caller has just read it."""
        image = image or self.images.get(record.image)
        path = self.images.store.absolute(image.path)
        cdrom = path if image.kind == ImageKind.CDROM else None
        nics = nic_specs(record)
        if record.host != LOCAL_HOST:  # links there are UDP tunnels, fixed when it starts
            tunnels = self.tunnels_of(record)
            nics = tuple(replace(nic, tunnel=tunnels.get(nic.index)) for nic in nics)
        return NodeSpec(
            id=record.id, name=record.name, paths=RunPaths(self.nodes_dir / record.id),
            accel=self.accel(), cpus=record.cpus, ram_mb=record.ram_mb,
            disk_bus=DiskBus(record.disk_bus), cdrom=cdrom, nics=nics, serial=record.serial,
            vnc=record.vnc, uuid=str(uuid.uuid5(_UUID_NAMESPACE, record.id)),
            extra_args=record.extra_args, host=record.host,
            # A libvirt host's domain runs once its console hub is attached (let_run resumes
            # it); a local QEMU runs at once: its serial connection was made before it ran.
            start_paused=record.host != LOCAL_HOST,
        )  # fmt: skip


def _find(session: Session, ref: str) -> NodeRecord:
    lab_name, _, name = ref.replace("/", ":").rpartition(":")
    repo = NodeRepository(session)
    record = repo.get(ref)
    if record is not None:
        return record
    if lab_name:
        lab = LabRepository(session).by_name(lab_name)
        found = repo.by_name(name, lab.id) if lab else []
    else:
        found = repo.by_name(name)
    if not found:
        raise NotFound(f"no node {ref!r}; `virtlab node list` shows the nodes")
    if len(found) > 1:
        raise InvalidRequest(f"{len(found)} labs have a node named {name}; say which: LAB:{name}")
    return found[0]
