"""Nodes under faults: a machine that paused on a full disk, and a server that died.

A disk write that fails pauses the guest (QEMU's ``werror=enospc``): :func:`paused` makes the
node ``suspended`` with a message saying why and what to do; ``resume`` retries the write.

At start-up (:func:`recover`), the nodes are made to agree with what the last server left.

The server may have died anywhere (``kill -9``, a power cut, the OOM killer), also half-way
through a deploy or a start. Afterwards:

- a node directory without a row (a create or a delete cut short, a boot test's scratch
  directory) is removed, its QEMU killed first if one still runs there; a half-made disk
  (``.disk.qcow2.new``, a wipe cut short) is removed, the node keeps the disk it had;
- a node the catalog says is ``running``, ``suspended`` or ``stopping`` gets its live QEMU
  back (monitor, console, links untouched: they are files) and the state QEMU reports; one
  whose QEMU is gone is ``crashed``, with the tail of its log;
- a node on a libvirt host that does not answer is ``unknown`` until it does (the host
  service re-adopts it then);
- a node that was ``starting`` and whose QEMU still runs (halted, ``-S``) has its start
  finished: console, links, then ``cont``; one whose QEMU is gone is ``crashed``.

So no node stays ``starting`` or ``stopping``, and every row has its directory.

The sweep is done here; what each node is then is decided in one place,
``NodeService.adopt_one`` (``services/nodes/adoption.py``), which the host service also asks
when a host answers again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from virtlab.catalog import NodeRecord
from virtlab.errors import CatalogBusy, InsufficientStorage, NotFound
from virtlab.nodes.qemu.process import qemu_pid_for
from virtlab.nodes.state import NodeState

if TYPE_CHECKING:
    from virtlab.services.nodes import NodeService

__all__ = ["paused", "record_surely", "recover", "sweep_directories"]

log = logging.getLogger("virtlab.nodes")

_ACTIVE = (NodeState.STARTING, NodeState.RUNNING, NodeState.SUSPENDED, NodeState.STOPPING)


async def record_surely(
    nodes: NodeService, node_id: str, state: NodeState, detail: str | None = None, *,
    durable: bool = False,
) -> NodeRecord | None:  # fmt: skip
    """Record what happened without a request (a crash, a pause, a start that went through):
    wait out a busy catalog however long it takes, since nobody could try again. A full disk
    (after the catalog's reserve was given back) is logged: the machine's state stands. The
    record as written; None if it could not be."""
    while True:
        try:
            return await nodes._set(node_id, state, detail, durable=durable)
        except CatalogBusy as exc:
            log.warning("node %s is %s; recording it waits for the catalog: %s",
                        node_id, state.value, exc)  # fmt: skip
        except InsufficientStorage as exc:
            log.error("node %s is %s, but the catalog cannot record it: %s",
                      node_id, state.value, exc)  # fmt: skip
            return None


async def paused(nodes: NodeService, node_id: str, reason: str) -> None:
    """The machine of ``node_id`` paused itself on a disk error (the caller holds its lock)."""
    try:
        record = nodes.get(node_id)
    except NotFound:
        return
    if nodes.driver.state(node_id) is not NodeState.SUSPENDED:
        return  # resumed meanwhile, and the write went through
    if reason == "nospace":
        why = (
            f"node {record.name} paused: its disk ran out of space in "
            f"{nodes.nodes_dir.parent}; free some space there, then resume it "
            f"(`virtlab node resume {record.name}`)"
        )
    else:
        why = (
            f"node {record.name} paused: a write to its disk failed ({reason}); "
            "fix the data directory's disk, then resume it"
        )
    with contextlib.suppress(KeyError):  # deleted meanwhile
        await record_surely(nodes, node_id, NodeState.SUSPENDED, why)


def sweep_directories(nodes_dir: Path, known: set[str]) -> list[str]:
    """Remove node directories without a row (killing a QEMU still running in one) and
    half-made disks; the names removed."""
    removed = []
    for path in sorted(nodes_dir.iterdir()) if nodes_dir.is_dir() else []:
        if not path.is_dir():
            continue
        if path.name in known:
            (path / ".disk.qcow2.new").unlink(missing_ok=True)
            continue
        pid = qemu_pid_for(path)
        if pid is not None:
            log.warning("killing QEMU %s of %s, a node no longer in the catalog", pid, path)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed


async def recover(nodes: NodeService) -> None:
    """Sweep what has no row, then have each node that was active (or ``unknown``) found
    again by :meth:`NodeService.adopt_one`, which decides its state."""
    records = nodes.list()
    for gone in sweep_directories(nodes.nodes_dir, {r.id for r in records}):
        log.warning("start-up sweep removed the node directory %s (no node has it)", gone)
    for record in records:
        was = NodeState(record.state)
        if was not in (*_ACTIVE, NodeState.UNKNOWN):
            continue
        during = " during its start" if was is NodeState.STARTING else ""
        await nodes.adopt_one(
            record, f"QEMU was no longer running when the server restarted{during}"
        )
