"""What the libvirt driver keeps per running node, and how a domain's end is read.

A domain that ends is ``stopped`` when we asked (stop, kill) or the guest powered off, and
``crashed`` otherwise (QEMU died or was killed, the guest crashed with ``on_crash=destroy``,
someone destroyed it behind virtlab's back), with the evidence a person can follow.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import libvirt

from virtlab.hosts.console import ConsoleBridge
from virtlab.hosts.domain import domain_name
from virtlab.hosts.vnc import VncBridge
from virtlab.nodes.spec import NodeSpec
from virtlab.nodes.state import NodeState

__all__ = ["Machine", "ending", "evidence"]

_STOPPED = libvirt.VIR_DOMAIN_EVENT_STOPPED
_CLEAN_ENDS = {
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: "the guest powered off",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED: "saved",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED: "migrated",
}
_ENDS = {
    libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: "destroyed by someone else",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED: "the guest crashed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED: "QEMU failed or was killed",
}


@dataclass
class Machine:
    spec: NodeSpec
    dom: libvirt.virDomain
    console: ConsoleBridge | None = None
    vnc: VncBridge | None = None
    suspended: bool = False
    expected_exit: bool = False
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return domain_name(self.spec.id)


def ending(machine: Machine, event: int, detail: int) -> tuple[NodeState, str] | None:
    """What a lifecycle event means for ``machine``: None unless it ended; else its state and,
    for a crash, why."""
    if event != _STOPPED:
        return None
    if machine.expected_exit or detail in _CLEAN_ENDS:
        return NodeState.STOPPED, ""
    return NodeState.CRASHED, _ENDS.get(detail, f"stopped (libvirt detail {detail})")


def evidence(machine: Machine, host: str, why: str) -> str:
    return (
        f"the domain {machine.name} on host {host} ended: {why}; its QEMU log is "
        f"/var/log/libvirt/qemu/{machine.name}.log on that host"
    )
