"""Node use cases: create, start, stop, kill, reset, suspend, resume, wipe, edit, delete.

Combines the catalog (node rows), the image catalog (bases), a node driver (machines) and the
console manager. Each action is guarded by the node's state (``virtlab.nodes.state``); a
transition runs under the node's own lock, so two requests for one node never interleave.
The checkpoint service takes those locks too (``holding``), resumes through ``start_held``
and says which nodes have checkpoints (``checkpoints_of``: no wipe, no hardware change).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from virtlab._util.faults import FaultPoint
from virtlab.catalog import Catalog, ImageRecord, NodeRecord, NodeRepository
from virtlab.catalog.checkpoints import CheckpointRecord
from virtlab.catalog.labs import LabRepository
from virtlab.errors import Conflict, InvalidRequest, NotFound
from virtlab.images.formats import ImageKind
from virtlab.names import NODE
from virtlab.nodes.driver import NodeDriver
from virtlab.nodes.memory import RamLedger
from virtlab.nodes.qemu.process import log_tail
from virtlab.nodes.spec import (
    LOCAL_HOST,
    Accel,
    DiskBus,
    NicModel,
    NodeSpec,
    RunPaths,
)
from virtlab.nodes.state import Action, NodeState, guard
from virtlab.services.consoles import ConsoleManager
from virtlab.services.events import EventBus
from virtlab.services.images import ImageService
from virtlab.services.limits import NodeQuota
from virtlab.services.node_faults import paused, record_surely, recover
from virtlab.services.node_settings import NodeSettings, nic_specs

__all__ = ["NodeService", "NodeSettings"]

log = logging.getLogger("virtlab.nodes")

# Node ids name the node's directory, which holds unix sockets: short ids keep socket paths
# under the kernel's 108-byte limit (see Settings.check_socket_paths).
NODE_ID_BYTES = 6
_UUID_NAMESPACE = uuid.UUID("6f1f6a2e-7c1a-4d0e-9a5e-0b7a1a5e1ab0")


def new_node_id() -> str:
    return secrets.token_hex(NODE_ID_BYTES)


_ACTIVE = (NodeState.STARTING, NodeState.RUNNING, NodeState.SUSPENDED, NodeState.STOPPING)
# Settings a saved machine depends on: a checkpoint cannot be resumed on other hardware.
_HARDWARE = ("cpus", "ram_mb", "disk_bus", "nics", "nic_model", "extra_args")


@dataclass
class NodeService:
    catalog: Catalog
    images: ImageService
    driver: NodeDriver
    consoles: ConsoleManager
    nodes_dir: Path
    accel: Callable[[], Accel]
    stop_timeout: float = 30.0
    events: EventBus | None = None
    quota: NodeQuota | None = None  # nodes per user
    memory: RamLedger | None = None  # RAM promised against the host's memory
    fault: FaultPoint = field(default_factory=FaultPoint)

    def __post_init__(self) -> None:
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._lab_names: dict[str, str] = {}
        self._ports_making: set[int] = set()  # console ports of nodes being created
        self._names_making: set[tuple[str, str]] = set()  # (lab id, name) being created
        # Set by the link service: wire a node's links once it runs; unwire them before it goes.
        self.after_start: Callable[[NodeRecord], Awaitable[None]] | None = None
        self.before_delete: Callable[[NodeRecord], Awaitable[None]] | None = None
        self.checkpoints_of: Callable[[str], list[str]] = lambda _id: []  # set by checkpoints
        # Set by the host service: where a new node goes; whether a host answers now.
        self.place: Callable[[NodeSettings], str] = lambda _s: "local"
        self.reachable: Callable[[str], bool] = lambda _host: True
        self.tunnels_of: Callable[[NodeRecord], dict] = lambda _r: {}  # set by links
        self.driver.on_exit = self._on_exit
        self.driver.on_pause = self._on_pause
        self.images.users_of = self.users_of

    # -- reading ------------------------------------------------------------------------------

    def list(self) -> list[NodeRecord]:
        with self.catalog.session() as session:
            return NodeRepository(session).list()

    def get(self, ref: str) -> NodeRecord:
        """A node by id, by ``LAB:NAME`` (or ``LAB/NAME``), or by a name no other lab uses."""
        lab_name, _, name = ref.replace("/", ":").rpartition(":")
        with self.catalog.session() as session:
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
            raise InvalidRequest(
                f"{len(found)} labs have a node named {name}; say which: LAB:{name}"
            )
        return found[0]

    def lab_name(self, lab_id: str) -> str:
        """The name of a lab; remembered, since a lab keeps its name and its id is never
        reused (node events and records ask on every change of state)."""
        name = self._lab_names.get(lab_id)
        if name is None:
            with self.catalog.session() as session:
                lab = LabRepository(session).get(lab_id)
            if lab is None:
                return "?"
            name = self._lab_names[lab_id] = lab.name
        return name

    def lab_id(self, lab: str) -> str:
        with self.catalog.session() as session:
            record = LabRepository(session).by_name(lab) or LabRepository(session).get(lab)
        if record is None:
            raise NotFound(f"no lab named {lab!r}; `virtlab lab list` shows the labs")
        return record.id

    def users_of(self, image: str) -> list[str]:
        with self.catalog.session() as session:
            return NodeRepository(session).using_image(image)

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

    # -- creating and editing -----------------------------------------------------------------

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

    # -- lifecycle ----------------------------------------------------------------------------

    async def _set(self, node_id: str, state: NodeState, detail: str | None = None) -> NodeRecord:
        fields: dict[str, object] = {"state": state.value}
        if detail is not None:
            fields["detail"] = detail
        # a state: the start-up re-adoption derives it again, so it need not wait for the disk
        record = await self.catalog.write(
            lambda session: NodeRepository(session).update(node_id, **fields), durable=False
        )
        self.publish(record)
        return record

    set_state = _set  # for the host service: nodes whose host went away or came back

    def publish(self, record: NodeRecord, *, deleted: bool = False) -> None:
        if self.events is not None:
            self.events.publish(
                "node", id=record.id, name=record.name, lab=self.lab_name(record.lab_id),
                state="deleted" if deleted else record.state, detail=record.detail,
            )  # fmt: skip

    async def _transition(self, ref: str, action: Action) -> NodeRecord:
        record = self.get(ref)
        guard(record.name, NodeState(record.state), action)
        return record

    @contextlib.asynccontextmanager
    async def holding(self, *node_ids: str) -> AsyncIterator[None]:
        """Hold these nodes' locks, taken in one fixed order (two holders never deadlock)."""
        async with contextlib.AsyncExitStack() as stack:
            for node_id in sorted(set(node_ids)):
                await stack.enter_async_context(self._locks[node_id])
            yield

    def _refuse_if_checkpoints(self, record: NodeRecord, verb: str, what: list[str]) -> None:
        tags = self.checkpoints_of(record.id) if what else []
        if tags:
            raise Conflict(
                f"cannot {verb} {', '.join(what)} of node {record.name}: its checkpoints "
                f"({', '.join(tags)}) are saved in its disk and need the machine as it is; delete"
                f" them first (`virtlab node checkpoints rm {record.name} TAG`, or `virtlab lab "
                "checkpoints rm LAB TAG` for a lab's)"
            )

    def active_ram(self) -> dict[str, int]:
        """The RAM (MiB) of each node of this host whose QEMU runs or is about to, by id (a
        libvirt host's nodes count against its own memory: placement, services/hosts.py)."""
        return {
            n.id: n.ram_mb
            for n in self.list()
            if NodeState(n.state) in _ACTIVE and n.host == LOCAL_HOST
        }

    def hold_ram(self, wanted: Mapping[str, int], what: str) -> contextlib.AbstractContextManager:
        """Promise ``wanted`` (id -> MiB) for the block (starts in flight), or refuse with
        LimitReached when the host's memory cannot hold it beside what runs."""
        if self.memory is None:
            return contextlib.nullcontext()
        return self.memory.hold(wanted, self.active_ram(), what)

    def check_ram(self, wanted: Mapping[str, int], what: str) -> None:
        """Refuse now what ``hold_ram`` would refuse, promising nothing."""
        if self.memory is not None:
            self.memory.check(wanted, self.active_ram(), what)

    async def start(self, ref: str) -> NodeRecord:
        record = self.get(ref)
        lock = self._locks[record.id]
        # A free lock is taken without a pause (nothing runs in between): the record just
        # read is still current, and is not read again.
        current = None if lock.locked() else record
        async with lock:
            return await self.start_held(record.id, current=current)

    async def start_held(
        self, node_id: str, resume: CheckpointRecord | None = None, *,
        current: NodeRecord | None = None,
    ) -> NodeRecord:  # fmt: skip
        """Start a node whose lock the caller holds; from checkpoint ``resume`` if given (its
        machine type and accelerator pinned to those it was saved with). ``current``: its
        record, read under that lock already."""
        record = current or self.get(node_id)
        guard(record.name, NodeState(record.state), Action.START)
        spec = self.spec(record)
        if resume is not None:
            machine, accel = resume.machine or spec.machine, resume.accel or spec.accel.value
            spec = replace(spec, loadvm=resume.tag, machine=machine, accel=Accel(accel))
        if spec.host == LOCAL_HOST and not spec.paths.disk.exists():  # a host's: a volume
            raise Conflict(f"node {record.name} has no disk; wipe it to make a fresh one")
        what = f"node {record.name} ({record.ram_mb} MiB)"
        local = {record.id: record.ram_mb} if record.host == LOCAL_HOST else {}
        with self.hold_ram(local, what):
            return await self._launch(record, spec)

    async def _launch(self, record: NodeRecord, spec: NodeSpec) -> NodeRecord:
        await self._set(record.id, NodeState.STARTING, "")
        try:
            # The guest runs from the start: its first serial bytes wait in the connection
            # the driver made before QEMU ran (console_socket); links are wired just after.
            await self.driver.start(spec)
        except BaseException as exc:
            await self._set(record.id, NodeState.STOPPED, f"start failed: {exc}")
            raise
        try:
            await self.let_run(record, spec)
        except BaseException as exc:
            await self.driver.kill(record.id)
            await self._set(record.id, NodeState.STOPPED, f"start failed: {exc}")
            raise
        await record_surely(self, record.id, NodeState.RUNNING)  # it runs: that must be known
        return self.get(record.id)

    async def let_run(self, record: NodeRecord, spec: NodeSpec) -> None:
        """The end of a start, once QEMU runs: take over the serial connection the driver
        made before the spawn (or connect to the console), wire the links, and let the vCPUs
        run if the driver started them halted. Also how a start the server died in is
        finished at start-up."""
        await self.consoles.open(record, spec, self.driver.console_socket(record.id))
        if self.after_start is not None:
            await self.after_start(record)
        self.fault("start_before_cont")
        if spec.start_paused:  # a driver that was asked to start it halted
            await self.driver.resume(record.id)

    async def stop(self, ref: str, timeout: float | None = None) -> NodeRecord:
        record = self.get(ref)
        async with self._locks[record.id]:
            await self._transition(record.id, Action.STOP)
            await self._set(record.id, NodeState.STOPPING)
            grace = self.stop_timeout if timeout is None else timeout
            if not await self.driver.stop(record.id, grace):
                note = f"the guest did not power off within {grace:g} s; it was stopped hard"
                return await self._set(record.id, NodeState.STOPPED, note)
            return self.get(record.id)

    async def kill(self, ref: str) -> NodeRecord:
        # Not under the node's lock: a kill must cut short a stop that waits for the guest.
        record = await self._transition(ref, Action.KILL)
        await self.driver.kill(record.id)
        return self.get(record.id)

    async def reset(self, ref: str) -> NodeRecord:
        record = await self._transition(ref, Action.RESET)
        await self.driver.reset(record.id)
        return record

    async def suspend(self, ref: str) -> NodeRecord:
        record = self.get(ref)
        async with self._locks[record.id]:
            await self._transition(record.id, Action.SUSPEND)
            await self.driver.suspend(record.id)
            return await self._set(record.id, NodeState.SUSPENDED)

    async def resume(self, ref: str) -> NodeRecord:
        record = self.get(ref)
        async with self._locks[record.id]:
            await self._transition(record.id, Action.RESUME)
            await self.driver.resume(record.id)
            return await self._set(record.id, NodeState.RUNNING, "")

    async def wipe(self, ref: str) -> NodeRecord:
        record = self.get(ref)
        async with self._locks[record.id]:
            record = await self._transition(record.id, Action.WIPE)
            image = self.images.get(record.image)
            base = None if image.kind == ImageKind.CDROM else self.images.store.absolute(image.path)
            self._refuse_if_checkpoints(record, "wipe", ["the disk"])
            await self.driver.create_disk(self.spec(record), base, record.disk_size_mb)
            return await self._set(record.id, NodeState.STOPPED, "")

    async def delete(self, ref: str) -> NodeRecord:
        record = self.get(ref)
        async with self._locks[record.id]:
            record = await self._transition(record.id, Action.DELETE)
            await self.driver.delete_disk(self.spec(record))  # a volume on a libvirt host
            if self.before_delete is not None:
                await self.before_delete(record)
            await self.consoles.close(record.id)
            node_id = record.id
            await self.catalog.write(lambda session: NodeRepository(session).remove(node_id))
            shutil.rmtree(self.nodes_dir / record.id, ignore_errors=True)
        self._locks.pop(record.id, None)
        self.publish(record, deleted=True)
        return record

    async def screenshot(self, ref: str) -> bytes:
        record = await self._transition(ref, Action.SCREENSHOT)
        return await self.driver.screenshot(record.id)

    async def _on_exit(self, node_id: str, state: NodeState, detail: str) -> None:
        await self.consoles.close(node_id)
        try:
            await record_surely(self, node_id, state, detail)
        except KeyError:
            return  # deleted meanwhile
        if state is NodeState.CRASHED:
            log.warning("node %s crashed: %s", node_id, detail.splitlines()[0] if detail else "")

    async def _on_pause(self, node_id: str, reason: str) -> None:
        async with self._locks[node_id]:  # after a resume under way has recorded its state
            await paused(self, node_id, reason)

    # -- server start and stop ----------------------------------------------------------------

    async def adopt_all(self) -> None:
        """Make the nodes agree with what outlived the last server (``node_faults``)."""
        await recover(self)

    async def adopt_one(self, record: NodeRecord, gone: str) -> None:
        """Find a node's machine again: unknown while its host does not answer; ``crashed``
        (saying ``gone``) when it no longer runs; else its consoles open again."""
        if not self.reachable(record.host):
            why = f"host {record.host} does not answer; its nodes are re-adopted when it does"
            await self._set(record.id, NodeState.UNKNOWN, why)
            return
        spec = self.spec(record)
        state = await self.driver.adopt(spec)
        if state is None:
            await self._set(record.id, NodeState.CRASHED, f"{gone}:\n{log_tail(spec.paths.log)}")
            return
        await self.consoles.open(record, spec)
        await self._set(record.id, state, "")
        log.info("re-adopted node %s (%s)", record.name, state.value)

    async def shutdown(self, *, stop_nodes: bool) -> None:
        if stop_nodes:
            for record in self.list():
                if NodeState(record.state) in (NodeState.RUNNING, NodeState.SUSPENDED):
                    await self.stop(record.id)
        await self.consoles.close_all()
        await self.driver.close()
