"""The QEMU node driver: overlays by qemu-img, machines by qemu-system, control by QMP.

Checkpoints are internal snapshots of the disk's format node (``disk0``): saved and deleted
by QMP jobs while the machine runs, listed and deleted by ``qemu-img`` while it does not, and
loaded by ``-loadvm`` at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from virtlab.errors import Conflict, InsufficientStorage
from virtlab.images.qemu_img import QemuImg
from virtlab.nodes.checkpoints import SavedState
from virtlab.nodes.driver import NodeDriver
from virtlab.nodes.qemu.argv import DISK_NODE, build_argv, nic_device_id
from virtlab.nodes.qemu.monitor import Monitor, MonitorError
from virtlab.nodes.qemu.process import LaunchFailure, QemuProcess, log_tail
from virtlab.nodes.qemu.sockets import NodeSockets
from virtlab.nodes.spec import NodeSpec
from virtlab.nodes.state import NodeState

__all__ = ["QemuDriver"]

log = logging.getLogger("virtlab.nodes")

_SHUTDOWN = "SHUTDOWN"  # QMP event: the guest (or we) asked for power-off
_IO_ERROR = "BLOCK_IO_ERROR"  # QMP event: a disk request failed; action "stop" paused the guest
_WAITING = "info: QEMU waiting for connection on:"  # each start's line in qemu.log
T = TypeVar("T")


@dataclass
class _Machine:
    spec: NodeSpec
    process: QemuProcess
    monitor: Monitor
    expected_exit: bool = False  # we asked it to end: its exit is not a crash
    suspended: bool = False
    sockets: NodeSockets | None = None  # ours, when we started it (not when adopted)
    watcher: asyncio.Task | None = field(default=None, repr=False)
    errors: asyncio.Task | None = field(default=None, repr=False)


class QemuDriver(NodeDriver):
    kind = "qemu"

    def __init__(
        self,
        *,
        qemu_img: QemuImg,
        binary: str = "qemu-system-x86_64",
        start_timeout: float = 30,
    ) -> None:
        super().__init__()
        self.qemu_img = qemu_img
        self.binary = binary
        self.start_timeout = start_timeout
        self._machines: dict[str, _Machine] = {}

    # -- disks ----------------------------------------------------------------------------------

    async def create_disk(self, spec: NodeSpec, base: Path | None, size_mb: int | None) -> None:
        disk = spec.paths.disk
        fresh = disk.with_name(f".{disk.name}.new")
        try:
            spec.paths.root.mkdir(parents=True, exist_ok=True)
            fresh.unlink(missing_ok=True)
            if base is not None:
                await asyncio.to_thread(self.qemu_img.create_overlay, base, fresh)
            else:
                await asyncio.to_thread(self.qemu_img.create_blank, fresh, (size_mb or 1024) << 20)
            fresh.replace(disk)  # a wipe swaps the whole disk in one step
        except OSError as exc:
            fresh.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage(
                    f"cannot make the disk of node {spec.name}: the data directory's disk is "
                    f"full ({exc.strerror}); free some space and try again"
                ) from exc
            raise
        except BaseException:
            fresh.unlink(missing_ok=True)  # a disk it had stays as it was
            raise

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, spec: NodeSpec) -> None:
        """Spawn QEMU on sockets made here (:mod:`virtlab.nodes.qemu.sockets`): the guest runs
        at once, its first serial bytes wait in the connection :meth:`console_socket` hands
        over; returns once QMP answers."""
        if spec.id in self._machines:
            raise Conflict(f"node {spec.name} already runs")
        paths = spec.paths
        for stale in (paths.vnc, paths.pidfile):  # (NodeSockets.bind replaces its own)
            stale.unlink(missing_ok=True)
        argv = build_argv(spec, binary=self.binary, passed_sockets=True)
        with paths.log.open("ab") as out:
            out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting\n".encode())
        try:
            sockets = NodeSockets.bind(paths.qmp, paths.serial if spec.serial else None)
        except OSError as exc:
            raise LaunchFailure(
                f"cannot make the QMP and console sockets of node {spec.name} in {paths.root}: "
                f"{exc}; check that directory's permissions and the disk's free space",
                argv,
            ) from exc
        try:
            process = QemuProcess.launch(argv, log=paths.log, pass_fds=sockets.passed_fds())
        except BaseException:
            sockets.close()
            raise
        sockets.release_listeners()  # QEMU holds them now
        try:
            monitor = await self._connect(spec, process)
        except BaseException:
            sockets.close()
            process.signal()
            await process.wait(10)
            raise
        self._track(_Machine(spec, process, monitor, sockets=sockets))

    def console_socket(self, node_id: str) -> socket.socket | None:
        machine = self._machines.get(node_id)
        return machine.sockets.take_serial() if machine and machine.sockets else None

    async def _connect(self, spec: NodeSpec, process: QemuProcess) -> Monitor:
        """Connect to QMP, unless QEMU dies or takes too long.

        The socket listens before QEMU runs, so the connection is queued at once; QEMU
        answers it (the greeting) once its main loop runs. A QEMU that dies before that
        (a bad ``-loadvm``, say) closes the socket, which fails the connection."""
        monitor = Monitor(spec.name)
        connect = asyncio.ensure_future(monitor.connect(spec.paths.qmp))
        ended = asyncio.ensure_future(process.wait())
        try:
            await asyncio.wait(
                {connect, ended}, timeout=self.start_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ended.cancel()
            if not connect.done():
                connect.cancel()
            with contextlib.suppress(asyncio.CancelledError, MonitorError):
                await connect
        if not connect.cancelled() and connect.exception() is None:
            return monitor
        await monitor.close()
        if process.alive:  # the monitor failed as QEMU went: let its exit be seen
            await process.wait(2)
        failed = connect.exception() if not connect.cancelled() else None
        why = (
            "exited" if not process.alive
            else f"did not answer in {self.start_timeout} s" if failed is None
            else f"failed its monitor ({failed})"
        )  # fmt: skip
        raise LaunchFailure(
            f"QEMU for node {spec.name} {why}: {_this_start(spec.paths.log)}",
            (),
            process.returncode,
            log_tail(spec.paths.log),
        ) from failed

    def _track(self, machine: _Machine) -> None:
        self._machines[machine.spec.id] = machine
        machine.watcher = asyncio.create_task(self._watch(machine), name=f"watch-{machine.spec.id}")
        machine.errors = asyncio.create_task(
            self._watch_io_errors(machine), name=f"io-errors-{machine.spec.id}"
        )

    async def _watch_io_errors(self, machine: _Machine) -> None:
        """A disk write that fails pauses the guest (QEMU's default ``werror=enospc`` for a
        full file system): the machine is then suspended, and ``resume`` retries the write."""
        async for event in machine.monitor.events(_IO_ERROR):
            data = event.get("data", {})
            if data.get("action") != "stop":
                continue  # reported to the guest, or ignored: it runs on
            machine.suspended = True
            reason = "nospace" if data.get("nospace") else str(data.get("reason", "I/O error"))
            log.warning("node %s paused on a disk error: %s", machine.spec.name, reason)
            await self._paused(machine.spec.id, reason)

    async def _watch(self, machine: _Machine) -> None:
        await machine.process.wait()
        if machine.errors is not None:
            machine.errors.cancel()
        await machine.monitor.close()
        if machine.sockets is not None:
            machine.sockets.close()
        self._machines.pop(machine.spec.id, None)
        asked = machine.expected_exit or machine.monitor.seen(_SHUTDOWN)
        if asked:
            await self._exited(machine.spec.id, NodeState.STOPPED)
        else:
            code = machine.process.returncode
            how = (
                f"exit code {code}"
                if code is not None and code >= 0
                else (f"signal {-code}" if code is not None else "no exit status (adopted)")
            )
            tail = log_tail(machine.spec.paths.log)
            log.warning("node %s crashed (%s)", machine.spec.name, how)
            await self._exited(machine.spec.id, NodeState.CRASHED, f"QEMU ended ({how}):\n{tail}")

    def _get(self, node_id: str) -> _Machine:
        machine = self._machines.get(node_id)
        if machine is None:
            raise Conflict(f"node {node_id} has no running machine")
        return machine

    async def stop(self, node_id: str, timeout: float) -> bool:
        machine = self._get(node_id)
        machine.expected_exit = True
        with contextlib.suppress(MonitorError):
            if machine.suspended:
                await machine.monitor.cont()  # a paused guest cannot see the power button
            await machine.monitor.system_powerdown()
        graceful = await machine.process.wait(timeout)
        if not graceful:
            log.info("node %s ignored the ACPI power-down for %s s; stopping it", node_id, timeout)
            machine.process.signal()
            await machine.process.wait()
        await self._settled(machine)
        return graceful

    async def kill(self, node_id: str) -> None:
        machine = self._get(node_id)
        machine.expected_exit = True
        machine.process.signal()
        await machine.process.wait()
        await self._settled(machine)

    async def _settled(self, machine: _Machine) -> None:
        if machine.watcher is not None:
            await asyncio.shield(machine.watcher)

    async def reset(self, node_id: str) -> None:
        await self._get(node_id).monitor.system_reset()

    async def suspend(self, node_id: str) -> None:
        machine = self._get(node_id)
        await machine.monitor.stop()
        machine.suspended = True

    async def resume(self, node_id: str) -> None:
        machine = self._get(node_id)
        await machine.monitor.cont()
        machine.suspended = False

    async def screenshot(self, node_id: str) -> bytes:
        machine = self._get(node_id)
        target = machine.spec.paths.root / f".screen-{uuid.uuid4().hex}.png"
        try:
            await machine.monitor.screendump(target)
            return target.read_bytes()
        finally:
            target.unlink(missing_ok=True)

    async def set_link(self, node_id: str, index: int, up: bool) -> None:
        await self._get(node_id).monitor.set_link(nic_device_id(index), up)

    # -- checkpoints ----------------------------------------------------------------------------

    async def checkpoint(self, node_id: str, tag: str) -> SavedState:
        machine = self._get(node_id)
        monitor, pause = machine.monitor, not machine.suspended
        started = time.monotonic()
        if pause:
            await monitor.stop()
        try:
            await self._while_alive(machine, monitor.snapshot_save(tag, DISK_NODE), "the save")
        except BaseException:
            if pause and machine.process.alive:
                with contextlib.suppress(MonitorError):
                    await monitor.cont()
            raise
        if pause:
            await monitor.cont()
        seconds = time.monotonic() - started
        size = (await monitor.snapshots(DISK_NODE)).get(tag, 0)
        return SavedState(tag, size, await monitor.version(), await monitor.machine_type(),
                          seconds)  # fmt: skip

    async def checkpoints(self, spec: NodeSpec) -> dict[str, int]:
        machine = self._machines.get(spec.id)
        if machine is not None:
            return await machine.monitor.snapshots(DISK_NODE)
        return await asyncio.to_thread(self.qemu_img.snapshots, spec.paths.disk)

    async def delete_checkpoint(self, spec: NodeSpec, tag: str) -> None:
        machine = self._machines.get(spec.id)
        if machine is not None:
            work = machine.monitor.snapshot_delete(tag, DISK_NODE)
            await self._while_alive(machine, work, "the deletion of a checkpoint")
        else:
            await asyncio.to_thread(self.qemu_img.delete_snapshot, spec.paths.disk, tag)

    async def _while_alive(self, machine: _Machine, work: Awaitable[T], what: str) -> T:
        """``work``, unless QEMU ends first (a job of a dead QEMU never concludes)."""
        job = asyncio.ensure_future(work)
        ended = asyncio.ensure_future(machine.process.wait())
        try:
            await asyncio.wait({job, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            if not job.done():
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError, MonitorError):
                    await job
        if job.cancelled():
            raise MonitorError(
                f"QEMU of node {machine.spec.name} ended during {what}: "
                f"{log_tail(machine.spec.paths.log, 4)}"
            )
        return job.result()

    async def adopt(self, spec: NodeSpec) -> NodeState | None:
        process = QemuProcess.adopt(spec.paths.pidfile, spec.paths.root, spec.paths.log)
        if process is None:
            return None
        monitor = Monitor(spec.name)
        try:
            await monitor.connect(spec.paths.qmp)
            status = await monitor.status()
        except MonitorError as exc:
            log.warning("node %s: QEMU runs (pid %s) but its monitor fails: %s",
                        spec.name, process.pid, exc)  # fmt: skip
            await monitor.close()
            process.forget()
            return None
        # "prelaunch": a QEMU started halted (-S) by an older server that died before `cont`.
        # "io-error": paused on a disk error (a full disk), waiting for a resume.
        paused = status in ("paused", "prelaunch", "io-error")
        machine = _Machine(spec, process, monitor, suspended=paused)
        self._track(machine)
        return NodeState.SUSPENDED if machine.suspended else NodeState.RUNNING

    def state(self, node_id: str) -> NodeState:
        machine = self._machines.get(node_id)
        if machine is None:
            return NodeState.STOPPED
        return NodeState.SUSPENDED if machine.suspended else NodeState.RUNNING

    def pid(self, node_id: str) -> int | None:
        machine = self._machines.get(node_id)
        return machine.process.pid if machine else None

    async def close(self) -> None:
        for machine in list(self._machines.values()):
            for task in (machine.watcher, machine.errors):
                if task is not None:
                    task.cancel()
            machine.process.forget()
            await machine.monitor.close()
            if machine.sockets is not None:
                machine.sockets.close()
        self._machines.clear()


def _this_start(log: Path, lines: int = 8) -> str:
    """The log's last lines since its last ``--- … starting`` line (this start's own), less
    QEMU's note that it takes the serial connection queued for it (``wait=on``)."""
    tail = log_tail(log, 60).splitlines()
    starts = [i for i, line in enumerate(tail) if line.startswith("--- ") and "starting" in line]
    own = [line for line in tail[starts[-1] + 1 if starts else 0 :] if _WAITING not in line]
    return "\n".join(own[-lines:]).strip()
