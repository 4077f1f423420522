"""Checkpoints as the node layer sees them: the tag rule, and what one saved machine is.

A checkpoint is a QEMU internal snapshot inside the node's own disk (its qcow2 overlay, or the
blank disk of a CD-ROM node): the guest's memory, its devices' state and the disk's blocks at
one moment. ``-loadvm TAG`` starts a machine from it. The catalog keeps a record of each one
(``virtlab.catalog.checkpoints``); the disk keeps the bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from virtlab.errors import InvalidRequest

__all__ = ["TAG_PATTERN", "SavedState", "validate_tag"]

# A letter first: QEMU looks a snapshot up by its numeric id before its name, so a tag "1"
# could name another snapshot. No comma, no space: the tag goes on the command line as it is.
TAG_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$"
_TAG = re.compile(TAG_PATTERN)


def validate_tag(tag: str) -> str:
    """Raise :class:`InvalidRequest` unless ``tag`` can name a checkpoint."""
    if not isinstance(tag, str) or not _TAG.fullmatch(tag):
        raise InvalidRequest(
            f"{tag!r} cannot name a checkpoint: a tag starts with a letter and goes on with up "
            "to 62 letters, digits, '_', '.' or '-' (QEMU would read a leading digit as a "
            "snapshot number)"
        )
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
