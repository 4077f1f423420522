"""Creating a node (its row, its console ports, its disk) and editing its settings."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from virtlab.catalog import NodeRecord, NodeRepository
from virtlab.errors import Conflict, InvalidRequest
from virtlab.images.formats import ImageKind
from virtlab.names import NODE
from virtlab.nodes.spec import DiskBus, NicModel
from virtlab.nodes.state import Action, NodeState, guard
from virtlab.services.node_settings import NodeSettings
from virtlab.services.nodes.reading import NodeReading

__all__ = ["NODE_ID_BYTES", "NodeCreation", "new_node_id"]

# Node ids name the node's directory, which holds unix sockets: short ids keep socket paths
# under the kernel's 108-byte limit (see Settings.check_socket_paths).
NODE_ID_BYTES = 6
# Settings a saved machine depends on: a checkpoint cannot be resumed on other hardware.
_HARDWARE = ("cpus", "ram_mb", "disk_bus", "nics", "nic_model", "extra_args")


def new_node_id() -> str:
    return secrets.token_hex(NODE_ID_BYTES)


class NodeCreation(NodeReading):
    async def create(
        self, settings: NodeSettings, *, reserved: Callable[[], None] | None = None
    ) -> NodeRecord:
        """Make a stopped node. ``reserved``: the caller (a lab deploy) has reserved it in the
        owner's quota, and this is called once its row is in; else it is reserved here."""
        settings = settings.checked()
        if reserved is None and self.quota is not None:
            lab_id = self.lab_id(settings.lab)
            owner = self.quota.owner_of_lab(lab_id)
            with self.quota.reserve(owner, 1, f"node {settings.name}") as made:
                return await self._create(settings, made, lab_id)
        return await self._create(settings, reserved or (lambda: None))

    async def _create(
        self, settings: NodeSettings, made: Callable[[], None], lab_id: str | None = None
    ) -> NodeRecord:
        image = self.images.get(settings.image)
        base = self.images.store.absolute(image.path)
        if image.kind == ImageKind.CDROM:
            if not settings.disk_size_mb:
                raise InvalidRequest(
                    f"{image.name} is a CD-ROM image: give disk_size_mb for the blank disk the "
                    "node installs onto"
                )
            base = None
        elif image.format != "qcow2":
            raise Conflict(
                f"{image.name} is stored as {image.format}, not qcow2; run "
                "`virtlab image verify --fix` to convert it first"
            )
        lab_id = lab_id or self.lab_id(settings.lab)
        node_id = new_node_id()
        in_use = self._ports_in_use() | self._ports_making
        ports = self.consoles.allocate(in_use, settings.serial, settings.vnc)
        record = NodeRecord(
            id=node_id, name=settings.name, image=image.name, cpus=settings.cpus,
            ram_mb=settings.ram_mb, disk_bus=settings.disk_bus.value, nics=settings.nics,
            nic_model=settings.nic_model.value, serial=settings.serial, vnc=settings.vnc,
            state=NodeState.STOPPED.value, created_at=datetime.now(UTC),
            disk_size_mb=settings.disk_size_mb if base is None else None,
            extra_args=settings.extra_args, telnet_port=ports.telnet, vnc_port=ports.vnc,
            lab_id=lab_id, kind=settings.kind, management=settings.management,
            position_x=settings.position[0] if settings.position else None,
            position_y=settings.position[1] if settings.position else None,
            host=self.place(settings),
        )  # fmt: skip
        self._check_name_free(settings.name, lab_id)
        # Until its row is in, the node's ports and name are kept from concurrent creations.
        claimed = {p for p in (ports.telnet, ports.vnc) if p is not None}
        self._ports_making |= claimed
        self._names_making.add((lab_id, settings.name))
        try:
            await self.driver.create_disk(self.spec(record, image), base, record.disk_size_mb)
            self.fault("node_after_disk")
            await self.catalog.write(lambda session: NodeRepository(session).add(record))
            made()
        except BaseException:
            shutil.rmtree(self.nodes_dir / node_id, ignore_errors=True)
            raise
        finally:
            self._ports_making -= claimed
            self._names_making.discard((lab_id, settings.name))
        self.publish(record)
        return record

    def _ports_in_use(self) -> set[int]:
        with self.catalog.session() as session:
            return NodeRepository(session).ports_in_use()

    def _check_name_free(self, name: str, lab_id: str, but: str | None = None) -> None:
        with self.catalog.session() as session:
            others = [r.name for r in NodeRepository(session).in_lab(lab_id) if r.id != but]
        if but is None:  # and the names of nodes being made in that lab right now
            others += [made for lab, made in self._names_making if lab == lab_id]
        NODE.refuse_clash(name, others, "this lab")

    async def edit(self, ref: str, **changes: object) -> NodeRecord:
        record = self.get(ref)
        position = changes.pop("position", None)
        if position is not None:  # moving a node on the canvas is fine in any state
            x, y = position  # type: ignore[misc]
            node_id = record.id
            record = await self.catalog.write(
                lambda session: NodeRepository(session).update(node_id, position_x=x, position_y=y)
            )
        if not changes:
            return record
        async with self._locks[record.id]:
            record = self.get(record.id)
            guard(record.name, NodeState(record.state), Action.EDIT)
            current = NodeSettings(
                name=record.name, image=record.image, cpus=record.cpus, ram_mb=record.ram_mb,
                disk_bus=DiskBus(record.disk_bus), nics=record.nics,
                nic_model=NicModel(record.nic_model), disk_size_mb=record.disk_size_mb,
                serial=record.serial, vnc=record.vnc, extra_args=record.extra_args,
            )  # fmt: skip
            if "image" in changes and changes["image"] != record.image:
                raise InvalidRequest("a node's image cannot change; create another node")
            moved = [k for k in _HARDWARE if k in changes and changes[k] != getattr(record, k)]
            self._refuse_if_checkpoints(record, "change", moved)
            renamed = changes.get("name", record.name) != record.name
            wanted = replace(current, **changes).checked(new_name=renamed)  # type: ignore[arg-type]
            self._check_name_free(wanted.name, record.lab_id, but=record.id)
            fields = {
                k: getattr(wanted, k).value if hasattr(getattr(wanted, k), "value")
                else getattr(wanted, k)
                for k in changes
            }  # fmt: skip
            node_id = record.id
            return await self.catalog.write(
                lambda session: NodeRepository(session).update(node_id, **fields)
            )
