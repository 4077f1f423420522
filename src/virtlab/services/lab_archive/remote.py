"""Disks of nodes on libvirt hosts, in and out of lab archives.

Out: a stopped node's disk volume is downloaded through a libvirt stream
(``virStorageVolDownload``) into the staging directory, byte for byte, where it is what a local
node's copy is: ``disks.copy_disks`` rebases it onto its base's placeholder and the snapshots
the catalog has no ready record of are dropped from it, as for a local disk. A qcow2 v2 disk
(libvirt's default format version, which servers before node volumes were made v3 left on
hosts) is amended to v3 first, its backing file left closed: an import refuses v2 overlays.

In: nodes land where the lab file says (a named host), or where placement puts them; the
deploy makes each one's fresh disk there. An archived disk bound for a libvirt host is
inspected and adopted here like any other (rebased onto the catalog's base and checked by
qemu-img), then rebased, metadata only, onto the path of that base on the node's host (the
fresh volume's backing file) and uploaded over the fresh volume (``virStorageVolUpload``).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from virtlab._util.proc import run
from virtlab.catalog import NodeRecord
from virtlab.errors import Conflict, ToolFailure
from virtlab.images.qemu_img import QemuImg
from virtlab.services.nodes import NodeService

from .disks import rebase

__all__ = ["fetch", "put", "upgrade"]


def _storage(nodes: NodeService, host: str) -> Any:
    driver_for = getattr(nodes.driver, "driver_for", None)
    storage = getattr(driver_for(host), "storage", None) if driver_for else None
    if storage is None:
        raise Conflict(f"the disks of nodes on host {host} cannot be moved by this server")
    return storage


async def fetch(nodes: NodeService, qemu_img: QemuImg, node: NodeRecord, dest: Path) -> None:
    """Download the disk of ``node`` (on a libvirt host) to ``dest``, as qcow2 v3."""
    await _storage(nodes, node.host).download_disk(node.id, dest)
    await asyncio.to_thread(upgrade, qemu_img, dest)


def upgrade(qemu_img: QemuImg, path: Path) -> None:
    """A qcow2 v2 file as v3 (``qemu-img amend``; its backing file is not opened)."""
    with path.open("rb") as f:
        head = f.read(8)
    if head[:4] != b"QFI\xfb" or int.from_bytes(head[4:8], "big") != 2:
        return
    alone = {"driver": "qcow2", "file": {"driver": "file", "filename": str(path)}, "backing": None}
    argv = [qemu_img.binary, "amend", "-o", "compat=1.1", f"json:{json.dumps(alone)}"]
    done = run(argv, limits=qemu_img.work_limits)
    if done.returncode != 0:
        raise ToolFailure(f"qemu-img could not make {path.name} qcow2 v3: {done.stderr_tail}",
                          argv, done.returncode, done.stderr_tail)  # fmt: skip


async def put(nodes: NodeService, qemu_img: QemuImg, node: NodeRecord, disk: Path) -> None:
    """Write the adopted archived ``disk`` over the fresh disk of ``node`` on its host."""
    storage = _storage(nodes, node.host)
    backing = await storage.disk_backing(node.id)
    if backing is not None:
        await asyncio.to_thread(rebase, qemu_img, disk, backing)
    await storage.upload_disk(node.id, disk)
