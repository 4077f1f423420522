"""Saving machines together: pause them all at once, save each, let them all run on.

Pausing first makes a lab's checkpoint one moment: no node runs on while another is being
saved, so what one node sent, its peer had received or had not yet seen, in both saves alike.
Pausing is QMP ``stop``, a few milliseconds per node, done for all nodes concurrently. The
saves then run four at a time. The paused nodes run again whatever happened.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from virtlab.catalog import NodeRecord
from virtlab.errors import VirtlabError
from virtlab.nodes.checkpoints import SavedState
from virtlab.nodes.driver import NodeDriver
from virtlab.services.checkpoints.progress import SaveProgress

__all__ = ["CONCURRENCY", "save_together"]

CONCURRENCY = 4


async def save_together(
    driver: NodeDriver, nodes: list[NodeRecord], tag: str, *, pause: list[NodeRecord],
    progress: SaveProgress, when_paused: Callable[[], None] = lambda: None,
) -> list[SavedState]:  # fmt: skip
    """Save every node in ``nodes`` as checkpoint ``tag``, ``pause`` paused around all the
    saves (``when_paused`` runs once they all are). Raises for the first node that failed
    (the others' snapshots may exist: the caller removes them)."""
    paused: list[str] = []
    try:
        results = await asyncio.gather(
            *(driver.suspend(n.id) for n in pause), return_exceptions=True
        )
        paused = [n.id for n, r in zip(pause, results, strict=True) if r is None]
        raise_first(zip(pause, results, strict=True), "could not be paused")
        when_paused()
        gate = asyncio.Semaphore(CONCURRENCY)

        async def save(node: NodeRecord) -> SavedState:
            async with gate:
                saved = await driver.checkpoint(node.id, tag)
            progress.finished(node.name)
            return saved

        saves = await asyncio.gather(*(save(n) for n in nodes), return_exceptions=True)
    finally:
        await asyncio.gather(*(driver.resume(node_id) for node_id in paused),
                             return_exceptions=True)  # fmt: skip
    raise_first(zip(nodes, saves, strict=True), "could not be saved")
    return [s for s in saves if isinstance(s, SavedState)]


def raise_first(results: Iterable[tuple[NodeRecord, object]], what: str) -> None:
    """Raise for the first ``(node, exception)`` among ``(node, result)`` pairs, naming the
    node."""
    for node, result in results:
        if isinstance(result, VirtlabError):
            raise type(result)(f"node {node.name} {what}: {result}") from result
        if isinstance(result, BaseException):
            raise result
