"""A node's lifecycle: start (also from a checkpoint), stop, kill, reset, suspend, resume,
wipe, delete, screenshot; what its machine reports on its own (an exit, a pause); and the
server's stop.

The checkpoint service resumes a node through ``start_held``, under the node's lock.
"""

from __future__ import annotations

import shutil
from dataclasses import replace

from virtlab.catalog import ImageRecord, NodeRecord, NodeRepository
from virtlab.catalog.checkpoints import CheckpointRecord
from virtlab.errors import Conflict
from virtlab.images.formats import ImageKind
from virtlab.nodes.spec import LOCAL_HOST, Accel, NodeSpec
from virtlab.nodes.state import Action, NodeState, guard
from virtlab.services.node_faults import paused, record_surely
from virtlab.services.nodes.base import log
from virtlab.services.nodes.ram import NodeRam

__all__ = ["NodeLifecycle"]


class NodeLifecycle(NodeRam):
    async def start(self, ref: str) -> NodeRecord:
        record, image = self.with_image(ref)
        lock = self._locks[record.id]
        # A free lock is taken without a pause (nothing runs in between): the record just
        # read is still current, and is not read again.
        current = None if lock.locked() else (record, image)
        async with lock:
            return await self.start_held(record.id, current=current)

    async def start_held(
        self, node_id: str, resume: CheckpointRecord | None = None, *,
        current: tuple[NodeRecord, ImageRecord] | None = None,
    ) -> NodeRecord:  # fmt: skip
        """Start a node whose lock the caller holds; from checkpoint ``resume`` if given (its
        machine type and accelerator pinned to those it was saved with). ``current``: its
        record and its image's, read under that lock already."""
        record, image = current or self.with_image(node_id)
        guard(record.name, NodeState(record.state), Action.START)
        spec = self.spec(record, image)
        if resume is not None:
            machine, accel = resume.machine or spec.machine, resume.accel or spec.accel.value
            spec = replace(spec, loadvm=resume.tag, machine=machine, accel=Accel(accel))
        if spec.host == LOCAL_HOST and not spec.paths.disk.exists():  # a host's: a volume
            raise Conflict(f"node {record.name} has no disk; wipe it to make a fresh one")
        what = f"node {record.name} ({record.ram_mb} MiB)"
        local = {record.id: record.ram_mb} if record.host == LOCAL_HOST else {}
        with self.hold_ram(local, what):
            return await self._launch(record, spec)

    async def _launch(
        self, record: NodeRecord, spec: NodeSpec, *, recorded: bool = False
    ) -> NodeRecord:
        """Run the node's machine. ``recorded``: its row says ``starting`` already and has
        not been made durable (a node created started): its ``running`` state is."""
        if not recorded:
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
        # It runs: that must be known. The row as written is the reply (not read again).
        running = await record_surely(self, record.id, NodeState.RUNNING, durable=recorded)
        return running or self.get(record.id)

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
            await self.discard(record, self.spec(record))
        self._locks.pop(record.id, None)
        return record

    async def discard(self, record: NodeRecord, spec: NodeSpec) -> None:
        """Remove a node whose machine does not run, under its lock: its disk (a volume on
        a libvirt host), its links' wiring, its consoles, its row, its directory."""
        await self.driver.delete_disk(spec)
        if self.before_delete is not None:
            await self.before_delete(record)
        await self.consoles.close(record.id)
        node_id = record.id
        await self.catalog.write(lambda session: NodeRepository(session).remove(node_id))
        shutil.rmtree(self.nodes_dir / record.id, ignore_errors=True)
        self.publish(record, deleted=True)

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

    async def shutdown(self, *, stop_nodes: bool) -> None:
        if stop_nodes:
            for record in self.list():
                if NodeState(record.state) in (NodeState.RUNNING, NodeState.SUSPENDED):
                    await self.stop(record.id)
        await self.consoles.close_all()
        await self.driver.close()
