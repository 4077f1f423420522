"""RAM holds: the memory a start promises against this host's, beside what already runs."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from virtlab.nodes.spec import LOCAL_HOST
from virtlab.nodes.state import NodeState
from virtlab.services.nodes.base import ACTIVE
from virtlab.services.nodes.reading import NodeReading

__all__ = ["NodeRam"]


class NodeRam(NodeReading):
    def active_ram(self) -> dict[str, int]:
        """The RAM (MiB) of each node of this host whose QEMU runs or is about to, by id (a
        libvirt host's nodes count against its own memory: placement, services/hosts.py)."""
        return {
            n.id: n.ram_mb
            for n in self.list()
            if NodeState(n.state) in ACTIVE and n.host == LOCAL_HOST
        }

    def hold_ram(self, wanted: Mapping[str, int], what: str) -> contextlib.AbstractContextManager:
        """Promise ``wanted`` (id -> MiB) for the block (starts in flight), or refuse with
        LimitReached when the host's memory cannot hold it beside what runs."""
        if self.memory is None:
            return contextlib.nullcontext()
        return self.memory.hold(wanted, self.active_ram(), what)

    def check_ram(self, wanted: Mapping[str, int], what: str) -> None:
        """Refuse now what ``hold_ram`` would refuse, promising nothing."""
        if self.memory is not None:
            self.memory.check(wanted, self.active_ram(), what)
