"""The node driver interface, and the fake that ships next to the real QEMU driver.

A driver runs machines; it knows nothing of the catalog, names or HTTP. The node service tells
it what to run (a ``NodeSpec``) and hears back through ``on_exit`` when a machine ends, saying
whether it was asked to (``stopped``) or not (``crashed``, with the tail of its log), and
through ``on_pause`` when a machine paused itself on a disk error (a full disk: QEMU stops the
guest rather than fail its write; ``resume`` retries it).
``tests/test_node_driver_contract.py`` runs one suite against both implementations.

Checkpoints live in the node's disk: ``checkpoint`` saves one from a running machine,
``start`` with ``spec.loadvm`` resumes from one (and fails, saying why, when it cannot),
``checkpoints`` and ``delete_checkpoint`` work whether the machine runs or not.
"""

from __future__ import annotations

import abc
import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from virtlab.errors import Conflict, ToolFailure
from virtlab.nodes.checkpoints import SavedState
from virtlab.nodes.spec import NodeSpec
from virtlab.nodes.state import NodeState

__all__ = [
    "FAKE_QEMU_VERSION", "ExitCallback", "FakeDriver", "NodeDriver", "PNG_1x1", "PauseCallback",
]  # fmt: skip

ExitCallback = Callable[[str, NodeState, str], Awaitable[None]]
"""``(node_id, stopped|crashed, detail)``: detail is the log tail when it crashed."""

PauseCallback = Callable[[str, str], Awaitable[None]]
"""``(node_id, reason)``: the machine paused itself; ``reason`` is ``nospace`` when its disk's
file system is full (QEMU's ``werror=enospc``), else the I/O error QEMU reported."""


class NodeDriver(abc.ABC):
    """Runs machines for nodes. Every method takes the node's id; ``start`` takes its spec."""

    kind: str = ""

    def __init__(self) -> None:
        self.on_exit: ExitCallback | None = None
        self.on_pause: PauseCallback | None = None

    async def _exited(self, node_id: str, state: NodeState, detail: str = "") -> None:
        if self.on_exit is not None:
            await self.on_exit(node_id, state, detail)

    async def _paused(self, node_id: str, reason: str) -> None:
        if self.on_pause is not None:
            await self.on_pause(node_id, reason)

    @abc.abstractmethod
    async def create_disk(self, spec: NodeSpec, base: Path | None, size_mb: int | None) -> None:
        """A fresh disk: an overlay over ``base`` (constant time), or blank of ``size_mb``."""

    async def delete_disk(self, spec: NodeSpec) -> None:
        """Remove the node's disk where it is kept apart from the node's directory (a volume
        on a libvirt host); a disk inside the directory goes with it, removed by the service."""
        await asyncio.sleep(0)

    @abc.abstractmethod
    async def start(self, spec: NodeSpec) -> None:
        """Start the machine; return once it runs (its monitor answers). With ``spec.loadvm``
        it starts from that checkpoint; one that cannot be loaded (missing, or saved on
        another machine type) fails the start with QEMU's reason, and nothing runs."""

    @abc.abstractmethod
    async def stop(self, node_id: str, timeout: float) -> bool:
        """ACPI power-down; after ``timeout`` seconds, a hard stop. Returns once it ended:
        True when the guest powered itself off, False when it had to be stopped hard."""

    @abc.abstractmethod
    async def kill(self, node_id: str) -> None:
        """End the machine at once. Returns once it ended."""

    @abc.abstractmethod
    async def reset(self, node_id: str) -> None: ...

    @abc.abstractmethod
    async def suspend(self, node_id: str) -> None: ...

    @abc.abstractmethod
    async def resume(self, node_id: str) -> None: ...

    @abc.abstractmethod
    async def screenshot(self, node_id: str) -> bytes:
        """The display as a PNG."""

    @abc.abstractmethod
    async def set_link(self, node_id: str, index: int, up: bool) -> None:
        """Carrier of NIC ``eth<index>`` up or down, as the guest sees it."""

    @abc.abstractmethod
    async def checkpoint(self, node_id: str, tag: str) -> SavedState:
        """Save the machine's memory, devices and writable disk as checkpoint ``tag`` in its
        disk. A running machine is paused for the save and runs on after it; a suspended one
        stays suspended. A tag the disk holds already is refused."""

    @abc.abstractmethod
    async def checkpoints(self, spec: NodeSpec) -> dict[str, int]:
        """The checkpoints in the node's disk (tag -> bytes of machine state), whether the
        machine runs or not."""

    @abc.abstractmethod
    async def delete_checkpoint(self, spec: NodeSpec, tag: str) -> None:
        """Remove checkpoint ``tag`` from the node's disk, whether the machine runs or not."""

    @abc.abstractmethod
    async def adopt(self, spec: NodeSpec) -> NodeState | None:
        """After a server restart: the state of the node's machine if it still runs, else None."""

    def console_socket(self, node_id: str) -> socket.socket | None:
        """The serial console's connection, already made, handed over once to the node's
        console hub right after ``start``: nothing the guest printed before is lost. None
        when the driver has none: the hub then connects to ``spec.paths.serial`` itself."""
        return None

    @abc.abstractmethod
    def state(self, node_id: str) -> NodeState:
        """What the driver sees: running, suspended, or stopped when it runs nothing for it."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Let go of every machine without stopping them (the server is going away)."""


# A valid 1x1 PNG, for the fake's screenshots.
PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e2b3a84a0000000049454e44ae426082"
)


FAKE_QEMU_VERSION = "0.0.0-fake"
_FAKE_MACHINES = {"pc": "pc-i440fx-7.2", "q35": "pc-q35-7.2"}  # aliases, resolved like QEMU's


@dataclass
class _FakeMachine:
    state: NodeState
    spec: NodeSpec | None = None


class FakeDriver(NodeDriver):
    """Machines that live in memory: instant, deterministic, for fast tests of everything above.

    ``crash(node_id)`` makes a machine die on its own; ``machines`` may be shared between two
    instances to play a server restart (the machines outlive the driver). A fake disk is a
    small JSON file holding its checkpoints, so they go where the file goes (a wipe makes a
    new file without any) and outlive the driver, as in a real qcow2.
    """

    kind = "fake"

    def __init__(self, machines: dict[str, _FakeMachine] | None = None) -> None:
        super().__init__()
        self.machines: dict[str, _FakeMachine] = machines if machines is not None else {}
        self.disks: dict[str, tuple[Path | None, int | None]] = {}
        self.links: dict[tuple[str, int], bool] = {}  # (node, NIC) -> carrier up

    def _get(self, node_id: str) -> _FakeMachine:
        machine = self.machines.get(node_id)
        if machine is None:
            raise Conflict(f"node {node_id} has no running machine")
        return machine

    async def create_disk(self, spec: NodeSpec, base: Path | None, size_mb: int | None) -> None:
        spec.paths.root.mkdir(parents=True, exist_ok=True)
        self._write_disk(spec.paths.disk, {})  # like the real one: a whole new file
        self.disks[spec.id] = (base, size_mb)

    @staticmethod
    def _read_disk(disk: Path) -> dict[str, dict]:
        try:
            return dict(json.loads(disk.read_text())["checkpoints"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ToolFailure(f"the fake disk {disk} cannot be read: {exc}") from exc

    @staticmethod
    def _write_disk(disk: Path, checkpoints: dict[str, dict]) -> None:
        fresh = disk.with_name(".fake.new")
        fresh.write_text(json.dumps({"fake-disk": 1, "checkpoints": checkpoints}))
        fresh.replace(disk)

    async def start(self, spec: NodeSpec) -> None:
        if spec.id in self.machines:
            raise Conflict(f"node {spec.name} already runs")
        if spec.loadvm is not None:
            saved = self._read_disk(spec.paths.disk).get(spec.loadvm)
            machine = _FAKE_MACHINES.get(spec.machine, spec.machine)
            if saved is None:
                why = f"Snapshot '{spec.loadvm}' does not exist in one or more devices"
            elif saved["machine"] != machine:
                why = f"Machine type received is '{saved['machine']}' and local is '{machine}'"
            else:
                why = ""
            if why:
                raise ToolFailure(f"QEMU for node {spec.name} exited: fake: {why}")
        self.machines[spec.id] = _FakeMachine(NodeState.RUNNING, spec)

    async def _end(self, node_id: str, state: NodeState, detail: str = "") -> None:
        self.machines.pop(node_id, None)
        await self._exited(node_id, state, detail)

    async def stop(self, node_id: str, timeout: float) -> bool:
        self._get(node_id)
        await self._end(node_id, NodeState.STOPPED)
        return True

    async def kill(self, node_id: str) -> None:
        self._get(node_id)
        await self._end(node_id, NodeState.STOPPED)

    async def crash(self, node_id: str) -> None:
        self._get(node_id)
        await self._end(node_id, NodeState.CRASHED, "fake: the machine died")

    async def reset(self, node_id: str) -> None:
        self._get(node_id)

    async def suspend(self, node_id: str) -> None:
        self._get(node_id).state = NodeState.SUSPENDED

    async def resume(self, node_id: str) -> None:
        self._get(node_id).state = NodeState.RUNNING

    async def screenshot(self, node_id: str) -> bytes:
        self._get(node_id)
        return PNG_1x1

    async def set_link(self, node_id: str, index: int, up: bool) -> None:
        self._get(node_id)
        self.links[(node_id, index)] = up

    async def checkpoint(self, node_id: str, tag: str) -> SavedState:
        spec = self._get(node_id).spec
        assert spec is not None
        saved = self._read_disk(spec.paths.disk)
        if tag in saved:
            raise ToolFailure(f"fake: Snapshot '{tag}' already exists in one or more devices")
        machine = _FAKE_MACHINES.get(spec.machine, spec.machine)
        saved[tag] = {"vm_state_size": spec.ram_mb << 19, "machine": machine}
        self._write_disk(spec.paths.disk, saved)
        return SavedState(tag, spec.ram_mb << 19, FAKE_QEMU_VERSION, machine, 0.001)

    async def checkpoints(self, spec: NodeSpec) -> dict[str, int]:
        return {t: int(s["vm_state_size"]) for t, s in self._read_disk(spec.paths.disk).items()}

    async def delete_checkpoint(self, spec: NodeSpec, tag: str) -> None:
        saved = self._read_disk(spec.paths.disk)
        if saved.pop(tag, None) is None:
            raise ToolFailure(f"fake: cannot delete checkpoint {tag}: the disk has no such one")
        self._write_disk(spec.paths.disk, saved)

    async def adopt(self, spec: NodeSpec) -> NodeState | None:
        machine = self.machines.get(spec.id)
        return machine.state if machine else None

    def state(self, node_id: str) -> NodeState:
        machine = self.machines.get(node_id)
        return machine.state if machine else NodeState.STOPPED

    async def close(self) -> None:
        await asyncio.sleep(0)
