"""Finding nodes' machines again: at the server's start (``node_faults.recover``), and when a
libvirt host that did not answer answers again."""

from __future__ import annotations

from virtlab.catalog import NodeRecord
from virtlab.nodes.qemu.process import log_tail
from virtlab.nodes.state import NodeState
from virtlab.services.node_faults import recover
from virtlab.services.nodes.base import log
from virtlab.services.nodes.lifecycle import NodeLifecycle

__all__ = ["NodeAdoption"]


class NodeAdoption(NodeLifecycle):
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
