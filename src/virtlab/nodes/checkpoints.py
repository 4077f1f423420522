"""Checkpoints as the node layer sees them: the tag rule, and what one saved machine is.

A checkpoint is a QEMU internal snapshot inside the node's own disk (its qcow2 overlay, or the
blank disk of a CD-ROM node): the guest's memory, its devices' state and the disk's blocks at
one moment. ``-loadvm TAG`` starts a machine from it. The catalog keeps a record of each one
(``virtlab.catalog.checkpoints``); the disk keeps the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from virtlab.errors import InvalidRequest
from virtlab.names import TAG, shown

__all__ = ["TAG_PATTERN", "SavedState", "validate_tag"]

# A letter first: QEMU looks a snapshot up by its numeric id before its name, so a tag "1"
# could name another snapshot. No comma, no space: the tag goes on the command line as it is.
TAG_PATTERN = TAG.pattern


def validate_tag(tag: str) -> str:
    """Raise :class:`InvalidRequest` unless ``tag`` can name a checkpoint."""
    if TAG.problem(tag):
        raise InvalidRequest(f"{shown(tag)} cannot name a checkpoint: {TAG.sentence}")
    return tag


@dataclass(frozen=True)
class SavedState:
    """One checkpoint in a node's disk, as the driver made it or found it.

    ``qemu_version`` and ``machine`` (the resolved machine type: ``pc`` is an alias of
    ``pc-i440fx-7.2`` on QEMU 7.2) are known when the driver saved it, empty when it was only
    read back from the disk. A resume pins the machine type it was saved with.
    """

    tag: str
    vm_state_size: int  # bytes of memory and device state
    qemu_version: str = ""
    machine: str = ""
    seconds: float = 0.0  # how long the save took (a running guest is paused that long)
    accel: str = ""  # kvm | tcg, when the driver knows it better than the spec (a libvirt host)
