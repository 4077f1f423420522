"""Finding nodes' machines again: at the server's start (``node_faults.recover`` sweeps, then
asks here for each node), and when a libvirt host that did not answer answers again.

:meth:`NodeAdoption.adopt_one` is the one place that decides what a node is then: ``unknown``
while its host does not answer; ``crashed`` when its machine no longer runs; a start the
server died in finished; else the state its machine reports, its consoles open again.
"""

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
        """Find a node's machine again, from the state its row says it was in: ``unknown``
        while its host does not answer; ``crashed`` (saying ``gone``, then its log's tail)
        when it no longer runs; a ``starting`` one has its start finished; else its consoles
        open again and it is in the state its machine reports."""
        if not self.reachable(record.host):  # a libvirt host that does not answer (yet)
            why = f"host {record.host} does not answer; its nodes are re-adopted when it does"
            await self._set(record.id, NodeState.UNKNOWN, why)
            return
        was = NodeState(record.state)
        spec = self.spec(record)
        state = await self.driver.adopt(spec)
        if state is None:
            await self._set(record.id, NodeState.CRASHED, f"{gone}:\n{log_tail(spec.paths.log)}")
            return
        if was is NodeState.STARTING:
            try:
                await self.let_run(record, spec)
            except Exception as exc:
                log.warning("node %s: finishing its start failed: %s", record.name, exc)
                await self.driver.kill(record.id)
                await self._set(record.id, NodeState.STOPPED, f"start failed: {exc}")
                return
            await self._set(record.id, NodeState.RUNNING, "")
            log.info("re-adopted node %s and finished its start", record.name)
            return
        await self.consoles.open(record, spec)
        # What it said stands (a disk-full pause says why it is suspended), except that its
        # host did not answer; a stop the server died in has to be asked for again.
        note = "" if was is NodeState.UNKNOWN else None
        if was is NodeState.STOPPING:
            note = "the server restarted while it was stopping; it still runs: stop it again"
        await self._set(record.id, state, note)
        log.info("re-adopted node %s (%s)", record.name, state.value)
