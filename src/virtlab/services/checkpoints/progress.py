"""Progress of checkpoint saves, as ``checkpoint`` events on the bus.

QEMU's snapshot job reports no progress of its own, so while saves run the disk files are
watched instead: the machine state is written into each node's disk, whose size grows by the
bytes written so far. An event every half second says how far each save got; the nodes' RAM
sizes bound what is left to write.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virtlab.services.events import EventBus

__all__ = ["SaveProgress", "watch_saves"]

INTERVAL = 0.5


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@dataclass
class SaveProgress:
    """The saves of one checkpoint (one node, or every node of a lab)."""

    events: EventBus | None
    base: dict[str, Any]  # lab, node, tag: in every event
    disks: dict[str, Path]  # node name -> its disk
    ram_bytes: int  # of all the nodes together
    done: set[str] = field(default_factory=set)
    _start: dict[str, int] = field(default_factory=dict)

    def publish(self, state: str, **data: Any) -> None:
        if self.events is not None:
            total = len(self.disks)
            self.events.publish("checkpoint", **self.base, state=state, done=len(self.done),
                                total=total, **data)  # fmt: skip

    def written(self) -> int:
        return sum(max(0, _size(disk) - self._start.get(n, 0)) for n, disk in self.disks.items())

    def finished(self, node: str) -> None:
        self.done.add(node)
        self.publish("progress", written=self.written(), ram_bytes=self.ram_bytes)


@contextlib.asynccontextmanager
async def watch_saves(progress: SaveProgress) -> AsyncIterator[SaveProgress]:
    """Publish ``saving``, then ``progress`` every half second until the block ends."""
    progress._start = {name: _size(disk) for name, disk in progress.disks.items()}
    progress.publish("saving", written=0, ram_bytes=progress.ram_bytes)

    async def tick() -> None:
        while True:
            await asyncio.sleep(INTERVAL)
            progress.publish("progress", written=progress.written(), ram_bytes=progress.ram_bytes)

    ticker = asyncio.create_task(tick(), name="checkpoint-progress")
    try:
        yield progress
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
