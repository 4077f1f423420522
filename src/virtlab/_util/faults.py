"""Named points where the crash-safety tests ask the server to die (``VIRTLAB_FAULT_POINT``).

The server kills itself with SIGKILL there, as a power cut or the OOM killer would: nothing
runs after it, no ``finally``, no undo. The points:

========================  =====================================================================
``during_convert``        an import's ``qemu-img convert`` is 10 % through
``after_convert``         converted, not verified
``before_register``       verified, nothing moved into the store
``after_intent``          the import's ``publish.json`` written, nothing moved
``after_move``            the image is in the store, its row not committed
``after_commit``          committed, staging not yet removed
``node_after_disk``       a node's disk is made, its row not written (a directory without a row)
``deploy_after_node``     a lab deploy made its first node (disk and row), not the others
``deploy_after_link``     a lab deploy made its first link, not the others
``start_before_cont``     a node's QEMU runs halted (``-S``), its console open and its links
                          wired, but it was not yet let run: the node is ``starting``
``lab_after_start``       a lab start (or deploy) has its first node running, the rest are
                          starting or stopped
========================  =====================================================================
"""

from __future__ import annotations

import os
import signal

__all__ = ["POINTS", "FaultPoint"]

POINTS = frozenset({
    "during_convert", "after_convert", "before_register", "after_intent", "after_move",
    "after_commit", "node_after_disk", "deploy_after_node", "deploy_after_link",
    "start_before_cont", "lab_after_start",
})  # fmt: skip


class FaultPoint:
    """``fault("name")`` kills this process when ``name`` is the configured point."""

    def __init__(self, point: str | None = None) -> None:
        if point is not None and point not in POINTS:
            raise ValueError(f"unknown fault point {point!r}; the points are {sorted(POINTS)}")
        self.point = point

    def __call__(self, name: str) -> None:
        assert name in POINTS, name
        if self.point == name:
            os.kill(os.getpid(), signal.SIGKILL)
