"""Checkpoint use cases: take, list, resume and delete the checkpoints of nodes and labs.

A node's checkpoint is an internal snapshot in its own disk (memory, devices and the disk's
blocks) with a catalog row beside it, on whatever host the node runs: a libvirt host's node
keeps it in its disk volume there (``virtlab.hosts.snapshots``), and a lab's checkpoint may
mix local and remote nodes. A lab's checkpoint is one such snapshot per node under
one tag, taken at one moment: every running node is paused at once (QMP ``stop``), each is
saved (four at a time), then all run on, so links and protocol state line up on resume. A
failure half-way removes what was saved; the nodes run on either way.

Resuming starts each node's QEMU with ``-loadvm TAG`` on the machine type and accelerator the
checkpoint was saved with, its serial console's scrollback put back as it was (``screens``); a
lab resumes all its nodes or none. A checkpoint QEMU cannot load
(another QEMU, another machine type) fails the start with QEMU's reason; nothing is left
running and the node still boots from its disk.

Crash safety: a row is ``saving`` before QEMU saves and ``ready`` after; it is ``deleting``
before the snapshot goes. :meth:`CheckpointService.reconcile` (at start-up, and for the nodes
of a libvirt host that answers again) compares the rows with what each disk holds: half-saved
and half-deleted checkpoints are removed, rows whose snapshot is gone are dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from pathlib import Path

from virtlab.catalog import Catalog, NodeRecord
from virtlab.catalog.checkpoints import DELETING, READY, CheckpointRecord
from virtlab.errors import Conflict, InvalidRequest, ToolFailure, VirtlabError
from virtlab.names import TAG
from virtlab.nodes.checkpoints import validate_tag
from virtlab.nodes.driver import NodeDriver
from virtlab.nodes.spec import LOCAL_HOST
from virtlab.nodes.state import Action, NodeState, guard
from virtlab.services.checkpoints import screens
from virtlab.services.checkpoints.progress import SaveProgress, watch_saves
from virtlab.services.checkpoints.records import CheckpointBook, LabCheckpoint
from virtlab.services.checkpoints.saving import CONCURRENCY, save_together
from virtlab.services.events import EventBus
from virtlab.services.labs import LabService
from virtlab.services.nodes import NodeService

__all__ = ["CheckpointService", "LabCheckpoint"]

log = logging.getLogger("virtlab.checkpoints")

_QUIET = (NodeState.STOPPED, NodeState.CRASHED)
_LIVE = (NodeState.RUNNING, NodeState.SUSPENDED)
_ACTIVE = (NodeState.STARTING, NodeState.RUNNING, NodeState.SUSPENDED, NodeState.STOPPING)


class CheckpointService(CheckpointBook):
    def __init__(
        self, *, catalog: Catalog, nodes: NodeService, labs: LabService,
        events: EventBus | None = None,
    ) -> None:  # fmt: skip
        super().__init__(catalog, nodes, labs)
        self.events = events
        nodes.checkpoints_of = self.tags_of

    @property
    def driver(self) -> NodeDriver:
        """The driver that runs the nodes (the node service's, looked up at each use)."""
        return self.nodes.driver

    # -- taking -------------------------------------------------------------------------------

    async def take_node(self, ref: str, tag: str) -> CheckpointRecord:
        """Save one running (or suspended) node as checkpoint ``tag``."""
        validate_tag(tag)
        node = self.nodes.get(ref)
        async with self.nodes.holding(node.id):
            node = self.nodes.get(node.id)
            guard(node.name, NodeState(node.state), Action.CHECKPOINT)
            self.tag_free([node], tag)
            progress = self._progress(self.nodes.lab_name(node.lab_id), node.name, tag, [node])
            running = [node] if NodeState(node.state) is NodeState.RUNNING else []
            (row,) = await self._save([node], tag, None, pause=running, progress=progress)
        return row

    async def take_lab(self, name: str, tag: str) -> LabCheckpoint:
        """Pause every node of the lab at once, save each as ``tag``, let them all run on."""
        validate_tag(tag)
        lab = self.labs.get(name)
        members = self.labs.summary(lab).nodes
        if not members:
            raise InvalidRequest(f"lab {lab.name} has no nodes: there is nothing to checkpoint")
        async with self.nodes.holding(*(n.id for n in members)):
            members = [self.nodes.get(n.id) for n in members]
            idle = [n.name for n in members if NodeState(n.state) not in _LIVE]
            if idle:
                raise Conflict(
                    f"cannot checkpoint lab {lab.name}: {', '.join(idle)} "
                    f"{'is' if len(idle) == 1 else 'are'} not running; every node must run (or "
                    f"be suspended): `virtlab lab start {lab.name}` first, or checkpoint nodes "
                    "one by one (`virtlab node checkpoint NODE TAG`)"
                )
            if TAG.clash(tag, [c.tag for c in self.of_lab(lab.name)]) is not None:
                raise Conflict(
                    f"lab {lab.name} has a checkpoint named {tag} already; choose another tag, "
                    f"or delete it first (`virtlab lab checkpoints rm {lab.name} {tag}`)"
                )
            self.tag_free(members, tag)
            running = [n for n in members if NodeState(n.state) is NodeState.RUNNING]
            progress = self._progress(lab.name, None, tag, members)
            await self._save(members, tag, lab.id, pause=running, progress=progress)
        return self.lab_checkpoint(lab.name, tag)

    def _progress(
        self, lab: str, node: str | None, tag: str, members: list[NodeRecord]
    ) -> SaveProgress:
        return SaveProgress(
            self.events, {"lab": lab, "node": node, "tag": tag},
            {n.name: self.nodes.spec(n).paths.disk for n in members},
            sum(n.ram_mb for n in members) << 20,
        )  # fmt: skip

    async def _save(
        self, nodes: list[NodeRecord], tag: str, lab_id: str | None, *,
        pause: list[NodeRecord], progress: SaveProgress,
    ) -> list[CheckpointRecord]:  # fmt: skip
        """Rows first (``saving``), then the saves, then the rows ``ready``. All or none: on a
        failure every snapshot taken is removed, with its row."""
        rows = [await self.new_row(n, tag, lab_id) for n in nodes]

        def keep_screens() -> None:  # while the guests are paused
            for node in nodes:
                screens.keep(self._dir(node), tag)

        try:
            async with watch_saves(progress):
                saved = await save_together(
                    self.driver, nodes, tag, pause=pause, progress=progress,
                    when_paused=keep_screens,
                )  # fmt: skip
        except BaseException as exc:
            for node, row in zip(nodes, rows, strict=True):
                try:
                    await self._remove(node, row)
                except VirtlabError as undo:
                    log.warning("node %s: checkpoint %s not removed: %s", node.name, tag, undo)
            progress.publish("failed", detail=str(exc))
            raise
        done = await self.mark_saved(list(zip(rows, saved, strict=True)))
        written = sum(r.vm_state_size for r in done)
        progress.publish("saved", written=written, ram_bytes=progress.ram_bytes)
        return done

    # -- resuming -----------------------------------------------------------------------------

    async def resume_node(self, ref: str, tag: str, *, force: bool = False) -> NodeRecord:
        """Start one stopped node from its checkpoint ``tag`` (``force``: kill it first)."""
        node = self.nodes.get(ref)
        row = self._usable(self.row(node, tag))
        what, stop = f"node {node.name}", f"virtlab node stop {node.name}"
        await self._quiet([node], force, what, stop)
        async with self.nodes.holding(node.id):
            node = self.nodes.get(node.id)
            await self._quiet([node], False, what, stop)
            return await self._resume_one(node, row)

    async def resume_lab(self, name: str, tag: str, *, force: bool = False) -> list[NodeRecord]:
        """Start every node of the lab from checkpoint ``tag``: all of them, or none."""
        lab = self.labs.get(name)
        checkpoint = self.lab_checkpoint(lab.name, tag)
        rows = {node.id: self._usable(row) for node, row in checkpoint.members}
        members = self.labs.summary(lab).nodes
        extra = [n.name for n in members if n.id not in rows]
        if extra:
            raise Conflict(
                f"checkpoint {tag} of lab {lab.name} does not cover {', '.join(extra)} (made "
                f"after it): delete {'it' if len(extra) == 1 else 'them'}, or resume the other "
                f"nodes one by one (`virtlab node resume NODE --from {tag}`)"
            )
        what, stop = f"lab {lab.name}", f"virtlab lab stop {lab.name}"
        await self._quiet(members, force, what, stop)
        async with self.nodes.holding(*rows):
            members = [self.nodes.get(n.id) for n in members]
            await self._quiet(members, False, what, stop)
            gate = asyncio.Semaphore(CONCURRENCY)

            async def one(node: NodeRecord) -> NodeRecord:
                async with gate:
                    return await self._resume_one(node, rows[node.id])

            ram = {n.id: n.ram_mb for n in members}
            what = f"lab {lab.name} from checkpoint {tag} ({sum(ram.values())} MiB)"
            with self.nodes.hold_ram(ram, what):  # all or none: refused before any starts
                results = await asyncio.gather(*(one(n) for n in members), return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:  # all or none: the ones that did resume are killed again
                for node, result in zip(members, results, strict=True):
                    if not isinstance(result, BaseException):
                        await self.nodes.kill(node.id)
                raise failed[0]
        return [r for r in results if isinstance(r, NodeRecord)]

    def _usable(self, row: CheckpointRecord) -> CheckpointRecord:
        if row.state != READY:
            raise Conflict(f"checkpoint {row.tag} is {row.state}, not ready; try again later")
        return row

    async def _quiet(self, nodes: list[NodeRecord], force: bool, what: str, stop: str) -> None:
        """Refuse (or with ``force``, kill) the nodes that are not stopped."""
        busy = [n for n in nodes if NodeState(n.state) not in _QUIET]
        if busy and force:
            for node in busy:
                if NodeState(node.state) in _ACTIVE:
                    await self.nodes.kill(node.id)
            return
        if busy:
            listed = ", ".join(f"{n.name} is {n.state}" for n in busy)
            raise Conflict(
                f"cannot resume {what} from a checkpoint: {listed}; stop it first (`{stop}`), "
                "or resume with --force to kill what runs (its state since is lost)"
            )

    def _dir(self, node: NodeRecord) -> Path:
        return self.nodes.nodes_dir / node.id

    async def _resume_one(self, node: NodeRecord, row: CheckpointRecord) -> NodeRecord:
        lab = self.nodes.lab_name(node.lab_id)
        self._publish(lab, node.name, row.tag, "resuming")
        replaced = screens.put_back(self._dir(node), row.tag)
        try:
            record = await self.nodes.start_held(node.id, row)
        except BaseException as exc:
            screens.undo(self._dir(node), replaced)
            if not isinstance(exc, ToolFailure):
                raise
            detail = (
                f"node {node.name} cannot resume from checkpoint {row.tag} (saved by QEMU "
                f"{row.qemu_version or '?'} on machine {row.machine or '?'}, {row.accel or '?'}):"
                f" {exc}. Nothing runs; `virtlab node start {node.name}` boots the node from "
                f"its disk instead, and `virtlab node checkpoints rm {node.name} {row.tag}` "
                "deletes the checkpoint"
            )
            self._publish(lab, node.name, row.tag, "failed", detail)
            raise Conflict(detail) from exc
        self._publish(lab, node.name, row.tag, "resumed")
        return record

    # -- deleting -----------------------------------------------------------------------------

    async def delete_node(self, ref: str, tag: str) -> None:
        node = self.nodes.get(ref)
        row = self.row(node, tag)
        if row.lab_id is not None:
            lab = self.nodes.lab_name(row.lab_id)
            raise Conflict(
                f"checkpoint {tag} of node {node.name} is part of lab {lab}'s checkpoint {tag}; "
                f"delete the lab's (`virtlab lab checkpoints rm {lab} {tag}`)"
            )
        async with self.nodes.holding(node.id):
            await self._delete(self.nodes.get(node.id), row)

    async def delete_lab(self, name: str, tag: str) -> None:
        checkpoint = self.lab_checkpoint(name, tag)
        async with self.nodes.holding(*(n.id for n, _ in checkpoint.members)):
            for node, row in checkpoint.members:
                await self._delete(self.nodes.get(node.id), row)
        self._publish(checkpoint.lab.name, None, tag, "deleted")

    async def _delete(self, node: NodeRecord, row: CheckpointRecord) -> None:
        if NodeState(node.state) in (NodeState.STARTING, NodeState.STOPPING):
            raise Conflict(
                f"cannot delete checkpoint {row.tag} of node {node.name} while it is "
                f"{node.state}; wait a moment and try again"
            )
        await self.set_state(row, DELETING)
        try:
            await self._remove(node, row)
        except BaseException:
            await self.set_state(row, READY)
            raise
        self._publish(self.nodes.lab_name(node.lab_id), node.name, row.tag, "deleted")

    async def _remove(self, node: NodeRecord, row: CheckpointRecord) -> None:
        """The snapshot out of the disk (if it is there), then the row."""
        spec = self.nodes.spec(node)
        has_disk = spec.host != LOCAL_HOST or spec.paths.disk.exists()  # a host's: a volume
        if has_disk and row.tag in await self.driver.checkpoints(spec):
            await self.driver.delete_checkpoint(spec, row.tag)
        screens.forget(self._dir(node), row.tag)
        await self.remove_row(row)

    # -- start-up -----------------------------------------------------------------------------

    async def reconcile(self, host: str | None = None) -> None:
        """Make the rows agree with the disks after a restart (see the module's doc); only
        of the nodes on ``host`` when given (a libvirt host that answers again)."""
        by_node: dict[str, list[CheckpointRecord]] = defaultdict(list)
        for row in self.all_rows():
            by_node[row.node_id].append(row)
        for node_id, rows in by_node.items():
            async with self.nodes.holding(node_id):  # a save or deletion under way finishes
                await self._reconcile_node(node_id, rows, host)

    async def _reconcile_node(
        self, node_id: str, rows: list[CheckpointRecord], host: str | None
    ) -> None:
        try:
            node = self.nodes.get(node_id)
            if host is not None and node.host != host:
                return
            held = await self.driver.checkpoints(self.nodes.spec(node))
        except VirtlabError as exc:
            log.warning("node %s: its checkpoints cannot be read: %s", node_id, exc)
            return
        rows = [r for r in self.of_node(node_id) if r.id in {x.id for x in rows}]  # current
        for row in rows:
            if row.state == READY and row.tag in held:
                continue
            why = (f"was {row.state} when the server stopped" if row.state != READY
                   else "is no longer in its disk")  # fmt: skip
            log.warning("node %s: checkpoint %s %s; removed", node.name, row.tag, why)
            try:
                await self._remove(node, row)
            except VirtlabError as exc:
                log.warning("node %s: checkpoint %s: %s", node.name, row.tag, exc)

    # -- events -------------------------------------------------------------------------------

    def _publish(self, lab: str, node: str | None, tag: str, state: str, detail: str = "") -> None:
        if self.events is not None:
            self.events.publish("checkpoint", lab=lab, node=node, tag=tag, state=state,
                                detail=detail)  # fmt: skip
