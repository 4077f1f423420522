"""Running labs: start every node (a few at a time, the RAM of all promised first), stop
them, destroy the lab; and forgetting a node or a lab (a destroy, a deploy's undo)."""

from __future__ import annotations

import asyncio

from virtlab.catalog import NodeRecord
from virtlab.catalog.labs import DEFAULT_LAB_ID, LabRecord, LabRepository
from virtlab.nodes.spec import LOCAL_HOST
from virtlab.nodes.state import NodeState
from virtlab.services.labs.reading import LabReading

_START_CONCURRENCY = 4
_ACTIVE = (NodeState.STARTING, NodeState.RUNNING, NodeState.SUSPENDED, NodeState.STOPPING)

__all__ = ["LabRunning"]


class LabRunning(LabReading):
    """Start, stop and destroy a lab; the base of ``LabDeploy`` (``deploy.py``)."""

    # -- running ------------------------------------------------------------------------------

    async def start(self, name: str) -> list[NodeRecord]:
        """Start every stopped or crashed node, a few at a time. The RAM of them all is
        promised before the first starts: if the host cannot hold it, none starts."""
        lab = self.get(name)
        gate = asyncio.Semaphore(_START_CONCURRENCY)
        todo = [
            n for n in self.summary(lab).nodes
            if NodeState(n.state) in (NodeState.STOPPED, NodeState.CRASHED)
        ]  # fmt: skip

        async def one(node: NodeRecord) -> NodeRecord:
            async with gate:
                started = await self.nodes.start(node.id)
            self.fault("lab_after_start")
            return started

        ram = {n.id: n.ram_mb for n in todo if n.host == LOCAL_HOST}  # others: their host's
        what = f"lab {lab.name} ({len(todo)} nodes, {sum(ram.values())} MiB)"
        with self.nodes.hold_ram(ram, what):
            return list(await asyncio.gather(*(one(n) for n in todo)))

    async def stop(self, name: str) -> list[NodeRecord]:
        """Stop every running node at once (ACPI power-down, then a hard stop)."""
        lab = self.get(name)
        todo = [
            n for n in self.summary(lab).nodes
            if NodeState(n.state) in (NodeState.RUNNING, NodeState.SUSPENDED, NodeState.STARTING)
        ]  # fmt: skip
        return list(await asyncio.gather(*(self.nodes.stop(n.id) for n in todo)))

    async def destroy(self, name: str) -> LabRecord:
        """Kill and delete every node and link of the lab, then the lab (``default`` stays)."""
        lab = self.get(name)
        for link in self.links.list(lab.id):
            await self.links.remove(link.id)
        for node in self.summary(lab).nodes:
            await self._forget_node(node.id)
        if lab.id != DEFAULT_LAB_ID:
            await self._forget_lab(lab)
        self.intents.forget(lab.name)
        self._publish(lab, "destroyed")
        return lab

    async def _forget_node(self, node_id: str) -> None:
        record = self.nodes.get(node_id)
        if NodeState(record.state) in _ACTIVE:
            await self.nodes.kill(node_id)
        await self.nodes.delete(node_id)

    async def _forget_lab(self, lab: LabRecord) -> None:
        await self.catalog.write(lambda session: LabRepository(session).remove(lab.id))
