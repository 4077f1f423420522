"""Creating a node (its row, its console ports, its disk), also started at once, and editing
its settings."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from virtlab.catalog import ImageRecord, NodeRecord, NodeRepository
from virtlab.catalog.labs import LabRepository
from virtlab.errors import Conflict, InvalidRequest, NotFound
from virtlab.images.formats import ImageKind
from virtlab.names import NODE
from virtlab.nodes.spec import LOCAL_HOST, DiskBus, NicModel, NodeSpec
from virtlab.nodes.state import Action, NodeState, guard
from virtlab.services.node_settings import NodeSettings
from virtlab.services.nodes.base import log
from virtlab.services.nodes.lifecycle import NodeLifecycle

__all__ = ["NODE_ID_BYTES", "NodeCreation", "new_node_id"]

# Node ids name the node's directory, which holds unix sockets: short ids keep socket paths
# under the kernel's 108-byte limit (see Settings.check_socket_paths).
NODE_ID_BYTES = 6
# Settings a saved machine depends on: a checkpoint cannot be resumed on other hardware.
_HARDWARE = ("cpus", "ram_mb", "disk_bus", "nics", "nic_model", "extra_args")


def new_node_id() -> str:
    return secrets.token_hex(NODE_ID_BYTES)


@dataclass(frozen=True)
class _LabNow:
    """What a create checks against, read in one catalog session."""

    lab_id: str
    owner_id: str | None  # the lab's owner, whose quota the node counts in
    ports: set[int]  # console ports the nodes have
    names: list[str]  # the names of the lab's nodes


class NodeCreation(NodeLifecycle):
    async def create(
        self, settings: NodeSettings, *, reserved: Callable[[], None] | None = None,
        start: bool = False,
    ) -> NodeRecord:  # fmt: skip
        """Make a stopped node, or with ``start`` a running one. ``reserved``: the caller (a
        lab deploy) has reserved it in the owner's quota, and this is called once its row is
        in; else it is reserved here.

        The disk is made (``qemu-img create``, in a thread) while the lab, the name, the
        console ports and the quota are checked; a check that refuses removes it again.

        With ``start``, its RAM is promised with those checks (a refusal removes the disk)
        and the row goes in as ``starting``, under the node's lock, without waiting for the
        catalog's disk to have it: QEMU is spawned at once, and the row is made durable with
        the ``running`` state while the guest boots. A start that fails removes the node
        again; the error says why."""
        settings = settings.checked()
        image = self.images.get(settings.image)
        base = self._base(image, settings)
        record = NodeRecord(
            id=new_node_id(), name=settings.name, image=image.name, cpus=settings.cpus,
            ram_mb=settings.ram_mb, disk_bus=settings.disk_bus.value, nics=settings.nics,
            nic_model=settings.nic_model.value, serial=settings.serial, vnc=settings.vnc,
            state=(NodeState.STARTING if start else NodeState.STOPPED).value,
            created_at=datetime.now(UTC),
            disk_size_mb=settings.disk_size_mb if base is None else None,
            extra_args=settings.extra_args, kind=settings.kind,
            management=settings.management,
            position_x=settings.position[0] if settings.position else None,
            position_y=settings.position[1] if settings.position else None,
            host=self.place(settings),
        )  # fmt: skip
        spec = self.spec(record, image)
        if not start:
            return await self._make(record, spec, base, settings, reserved)
        async with self._locks[record.id]:  # a new id: free, taken before the row is in
            with contextlib.ExitStack() as ram:
                record = await self._make(record, spec, base, settings, reserved, ram)
                try:
                    return await self._launch(record, spec, recorded=True)
                except BaseException:
                    await self.discard(record, spec)
                    raise

    async def _make(
        self, record: NodeRecord, spec: NodeSpec, base: Path | None, settings: NodeSettings,
        reserved: Callable[[], None] | None, ram: contextlib.ExitStack | None = None,
    ) -> NodeRecord:  # fmt: skip
        """The disk, the checks and the row of ``create``; the record as inserted. ``ram``:
        for a node that starts at once, where its RAM hold is kept for the start."""
        disk = asyncio.create_task(self.driver.create_disk(spec, base, record.disk_size_mb))
        claimed: set[int] = set()
        named: tuple[str, str] | None = None
        try:
            await asyncio.sleep(0)  # one turn of the loop: the task hands qemu-img to its thread
            if ram is not None:
                local = {record.id: record.ram_mb} if record.host == LOCAL_HOST else {}
                ram.enter_context(self.hold_ram(local, f"node {record.name} ({record.ram_mb} MiB)"))
            now = self._lab_now(settings.lab)
            lab_id = now.lab_id
            NODE.refuse_clash(settings.name, now.names + self._making_in(lab_id), "this lab")
            ports = self.consoles.allocate(now.ports | self._ports_making, settings.serial,
                                           settings.vnc)  # fmt: skip
            record = replace(record, lab_id=lab_id, telnet_port=ports.telnet, vnc_port=ports.vnc)
            # Until its row is in, the node's ports and name are kept from concurrent creations.
            claimed = {p for p in (ports.telnet, ports.vnc) if p is not None}
            self._ports_making |= claimed
            named = (lab_id, settings.name)
            self._names_making.add(named)
            with self._reserve(reserved, now.owner_id, settings.name) as made:
                await asyncio.shield(disk)  # a cancelled request waits for it in _unmake
                self.fault("node_after_disk")
                # A node that starts at once is made durable with its running state.
                durable = record.state == NodeState.STOPPED.value
                await self.catalog.write(
                    lambda session: NodeRepository(session).add(record), durable=durable
                )
                made()
        except BaseException:
            await self._unmake(disk, spec)
            raise
        finally:
            self._ports_making -= claimed
            if named is not None:
                self._names_making.discard(named)
        self.publish(record)
        return record

    def _base(self, image: ImageRecord, settings: NodeSettings) -> Path | None:
        """What a new node's disk is made over: the image, or nothing (a CD-ROM's blank disk)."""
        if image.kind == ImageKind.CDROM:
            if not settings.disk_size_mb:
                raise InvalidRequest(
                    f"{image.name} is a CD-ROM image: give disk_size_mb for the blank disk the "
                    "node installs onto"
                )
            return None
        if image.format != "qcow2":
            raise Conflict(
                f"{image.name} is stored as {image.format}, not qcow2; run "
                "`virtlab image verify --fix` to convert it first"
            )
        return self.images.store.absolute(image.path)

    def _lab_now(self, lab: str) -> _LabNow:
        with self.catalog.session() as session:
            labs = LabRepository(session)
            found = labs.by_name(lab) or labs.get(lab)
            if found is None:
                raise NotFound(f"no lab named {lab!r}; `virtlab lab list` shows the labs")
            nodes = NodeRepository(session)
            names = [r.name for r in nodes.in_lab(found.id)]
            return _LabNow(found.id, found.owner_id, nodes.ports_in_use(), names)

    def _making_in(self, lab_id: str) -> list[str]:
        """The names of the nodes being made in that lab right now."""
        return [made for lab, made in self._names_making if lab == lab_id]

    def _reserve(
        self, reserved: Callable[[], None] | None, owner_id: str | None, name: str
    ) -> contextlib.AbstractContextManager[Callable[[], None]]:
        if reserved is not None or self.quota is None:
            return contextlib.nullcontext(reserved or (lambda: None))
        return self.quota.reserve(owner_id, 1, f"node {name}")

    async def _unmake(self, disk: asyncio.Task[None], spec: NodeSpec) -> None:
        """Undo a create that did not go through: wait for its disk to be made or to fail (a
        thread cannot be cut short), then remove it (a volume on a libvirt host, then the
        node's directory)."""
        await asyncio.wait({disk})
        if not disk.cancelled() and disk.exception() is None:
            try:
                await self.driver.delete_disk(spec)
            except Exception as exc:  # the refusal is what the caller needs to hear
                log.warning("node %s was not made, and its disk could not be removed: %s",
                            spec.name, exc)  # fmt: skip
        shutil.rmtree(self.nodes_dir / spec.id, ignore_errors=True)

    def _check_name_free(self, name: str, lab_id: str, but: str) -> None:
        with self.catalog.session() as session:
            others = [r.name for r in NodeRepository(session).in_lab(lab_id) if r.id != but]
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
