"""How the libvirt driver follows its domains and its host (a base of :class:`LibvirtDriver`).

* **Ends** come as lifecycle events: the guest powered off, or we stopped/killed it, is
  ``stopped``; anything else (QEMU died, someone destroyed it behind our back) is ``crashed``.
* **Adoption**: a node whose domain runs on the host (a server restart) is taken back, its
  consoles attached again.
* **Hosts come and go.** When the host stops answering, its nodes are *unknown*
  (:meth:`~DomainAdoption.unknown`; ``on_host_change`` hears it) and nothing is ended; when it
  answers again every node is looked up: a running domain is re-adopted (console re-attached), a
  missing one ended while we could not see it and is reported ``crashed`` (``stopped`` if we had
  asked).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

import libvirt

from virtlab.hosts.connection import HostConnection, HostStatus
from virtlab.hosts.domain import domain_name
from virtlab.hosts.lifecycle import DomainLifecycle
from virtlab.hosts.machine import Machine as _Machine
from virtlab.hosts.machine import ending, evidence
from virtlab.nodes.spec import NodeSpec
from virtlab.nodes.state import NodeState

__all__ = ["DomainAdoption"]

log = logging.getLogger("virtlab.hosts")


class DomainAdoption(DomainLifecycle):
    """Lifecycle events, adoption, and the host's comings and goings."""

    async def _lookup(self, spec: NodeSpec) -> tuple[libvirt.virDomain, bool] | None:
        """The node's domain if it runs on the host, and whether it is paused."""
        conn = self.host.conn

        def lookup() -> tuple[libvirt.virDomain, int] | None:
            try:
                dom = conn.lookupByName(domain_name(spec.id))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise
            return dom, dom.state()[0]

        found = await self.host.call(f"look for node {spec.name}", lookup)
        if found is None or found[1] not in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED):
            return None
        return found[0], found[1] == libvirt.VIR_DOMAIN_PAUSED

    async def adopt(self, spec: NodeSpec) -> NodeState | None:
        found = await self._lookup(spec)
        if found is None:
            return None
        machine = _Machine(spec, found[0], suspended=found[1])
        self._machines[spec.id] = machine
        await self._attach(machine)
        return NodeState.SUSPENDED if machine.suspended else NodeState.RUNNING

    def state(self, node_id: str) -> NodeState:
        machine = self._machines.get(node_id)
        if machine is None:
            return NodeState.STOPPED
        return NodeState.SUSPENDED if machine.suspended else NodeState.RUNNING

    def unknown(self, node_id: str) -> bool:
        """Whether the node's host is not answering (its state is then the last one seen)."""
        return node_id in self._machines and self.host.status is not HostStatus.UP

    def on_lifecycle(self, host: HostConnection, domain: str, event: int, detail: int) -> None:
        machine = next((m for m in self._machines.values() if m.name == domain), None)
        verdict = ending(machine, event, detail) if machine is not None else None
        if machine is not None and verdict is not None:
            state, why = verdict
            detail_text = evidence(machine, self.host.name, why) if why else ""
            self._spawn(self._end(machine, state, detail_text))

    def on_host_down(self, host: HostConnection, reason: str) -> None:
        for machine in self._machines.values():
            if machine.console is not None:
                machine.console.detach()
        self._notify(False)

    def on_host_up(self, host: HostConnection) -> None:
        self._spawn(self._readopt())

    async def _readopt(self) -> None:
        for machine in list(self._machines.values()):
            spec = machine.spec
            try:
                state = await self.adopt_again(machine)
            except Exception as exc:
                log.warning("node %s: cannot re-adopt it on host %s: %s", spec.name,
                            self.host.name, exc)  # fmt: skip
                continue
            if state is None:
                how = NodeState.STOPPED if machine.expected_exit else NodeState.CRASHED
                why = "it ended while the host was not answering"
                await self._end(machine, how, evidence(machine, self.host.name, why))
        self._notify(True)

    async def adopt_again(self, machine: _Machine) -> NodeState | None:
        """The host answers again: the same machine, its consoles kept (the hub stays
        connected), on the new connection; None when its domain is gone."""
        found = await self._lookup(machine.spec)
        if found is None:
            return None
        machine.dom, machine.suspended = found
        await self._attach(machine)
        return NodeState.SUSPENDED if machine.suspended else NodeState.RUNNING

    def _notify(self, up: bool) -> None:
        if self.on_host_change is not None:
            self._spawn(self.on_host_change(self.host.name, up, list(self._machines)))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
