"""The node driver interface, and the fake that ships next to the real QEMU driver.

A driver runs machines; it knows nothing of the catalog, names or HTTP. The node service tells
it what to run (a ``NodeSpec``) and hears back through ``on_exit`` when a machine ends, saying
whether it was asked to (``stopped``) or not (``crashed``, with the tail of its log).
``tests/test_node_driver_contract.py`` runs one suite against both implementations.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from virtlab.errors import Conflict
from virtlab.nodes.spec import NodeSpec
from virtlab.nodes.state import NodeState

__all__ = ["ExitCallback", "FakeDriver", "NodeDriver", "PNG_1x1"]

ExitCallback = Callable[[str, NodeState, str], Awaitable[None]]
"""``(node_id, stopped|crashed, detail)``: detail is the log tail when it crashed."""


class NodeDriver(abc.ABC):
    """Runs machines for nodes. Every method takes the node's id; ``start`` takes its spec."""

    kind: str = ""

    def __init__(self) -> None:
        self.on_exit: ExitCallback | None = None

    async def _exited(self, node_id: str, state: NodeState, detail: str = "") -> None:
        if self.on_exit is not None:
            await self.on_exit(node_id, state, detail)

    @abc.abstractmethod
    async def create_disk(self, spec: NodeSpec, base: Path | None, size_mb: int | None) -> None:
        """A fresh disk: an overlay over ``base`` (constant time), or blank of ``size_mb``."""

    @abc.abstractmethod
    async def start(self, spec: NodeSpec) -> None:
        """Start the machine; return once it runs (its monitor answers)."""

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
    async def adopt(self, spec: NodeSpec) -> NodeState | None:
        """After a server restart: the state of the node's machine if it still runs, else None."""

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


@dataclass
class _FakeMachine:
    state: NodeState


class FakeDriver(NodeDriver):
    """Machines that live in memory: instant, deterministic, for fast tests of everything above.

    ``crash(node_id)`` makes a machine die on its own; ``machines`` may be shared between two
    instances to play a server restart (the machines outlive the driver).
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
        fresh = spec.paths.disk.with_name(".fake.new")
        fresh.write_bytes(b"fake disk")
        fresh.replace(spec.paths.disk)  # like the real one: a whole new file
        self.disks[spec.id] = (base, size_mb)

    async def start(self, spec: NodeSpec) -> None:
        if spec.id in self.machines:
            raise Conflict(f"node {spec.name} already runs")
        self.machines[spec.id] = _FakeMachine(NodeState.RUNNING)

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

    async def adopt(self, spec: NodeSpec) -> NodeState | None:
        machine = self.machines.get(spec.id)
        return machine.state if machine else None

    def state(self, node_id: str) -> NodeState:
        machine = self.machines.get(node_id)
        return machine.state if machine else NodeState.STOPPED

    async def close(self) -> None:
        await asyncio.sleep(0)
