"""Node disks in and out of archives.

Out: a stopped node's disk is copied; an overlay's copy is rebased, metadata only, onto the
placeholder ``<sha256>.qcow2`` (its base's absolute path means nothing on another host).

In: an archived overlay is a qcow2 file *with* a backing file, which the image import pipeline
rightly refuses. So the header is read in Python first: the backing file name must be exactly
the placeholder, and the image inspector judges everything else (data files, encryption,
unknown features, tables, size) on a view of the file whose backing pointer reads as zero. Only
then is it rebased (``qemu-img rebase -u`` opens the overlay alone, never its backing file) onto
the catalog's base, and qemu-img must agree (``info``), and find no damage (``check``, the first
call that opens the base). A blank install disk must have no backing file at all, like any
upload.

Checkpoints (internal snapshots) travel inside the disks. Out, a copy keeps only the snapshots
the catalog has a ready record of; in, a disk must hold exactly those its manifest entry lists
(``qemu-img info`` reads the table after ``check`` passed), or, imported without checkpoints,
loses them all (``qemu-img snapshot -d`` on the copy, before it is put in place).
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

from virtlab._util.proc import run
from virtlab.catalog import ImageRecord, NodeRecord
from virtlab.errors import Conflict, CorruptImage, InvalidRequest, ToolFailure, UnsafeImage
from virtlab.images.formats import ImageFormat, ImageKind
from virtlab.images.importer import Importer
from virtlab.images.inspect import ImageSource, inspect_file, inspect_source
from virtlab.images.inspect.verdict import quoted
from virtlab.images.qemu_img import QemuImg
from virtlab.nodes.spec import RunPaths

from .archive import NodeEntry

__all__ = [
    "adopt_disk", "check_snapshots", "copy_disks", "inspect_disk", "keep_snapshots",
    "put_in_place", "rebase",
]  # fmt: skip

_QCOW = struct.Struct(">4sIQII")  # magic, version, backing offset, backing size, cluster bits


def placeholder(image: ImageRecord | NodeEntry) -> str:
    sha = image.sha256 if isinstance(image, ImageRecord) else image.image_sha256
    return f"{sha}.qcow2"


def rebase(qemu_img: QemuImg, path: Path, backing: str) -> None:
    """Point an overlay at ``backing`` without opening either (``rebase -u``: metadata only)."""
    argv = [qemu_img.binary, "rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b", backing,
            str(path)]  # fmt: skip
    done = run(argv, limits=qemu_img.info_limits)
    if done.returncode != 0:
        raise ToolFailure(f"qemu-img could not rebase {path.name}: {done.stderr_tail}", argv,
                          done.returncode, done.stderr_tail)  # fmt: skip


def copy_disks(
    qemu_img: QemuImg, nodes_dir: Path, nodes: list[NodeRecord],
    bases: dict[str, ImageRecord], work: Path, fetched: frozenset[str] = frozenset(),
) -> list[tuple[str, Path]]:  # fmt: skip
    """``(node name, copy)`` of each node's disk, overlays rebased onto their placeholder.
    The copies of the nodes named in ``fetched`` are in ``work`` already (from their hosts)."""
    copies = []
    for node in nodes:
        disk, copy = RunPaths(nodes_dir / node.id).disk, work / f"{node.name}.qcow2"
        if node.name in fetched:
            pass
        elif not disk.is_file():
            raise Conflict(f"node {node.name} has no disk; wipe it, or delete it, first")
        else:
            before = _stamp(disk)
            shutil.copyfile(disk, copy)
            if _stamp(disk) != before:
                raise Conflict(f"node {node.name}'s disk changed while it was copied; try again")
        if bases[node.name].kind != ImageKind.CDROM:
            rebase(qemu_img, copy, placeholder(bases[node.name]))
        copies.append((node.name, copy))
    return copies


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


class _HiddenBacking(ImageSource):
    """A file whose backing file pointer reads as zeros: the inspector then judges everything
    else about an overlay whose backing file name was checked on its own."""

    def read(self, offset: int, length: int) -> bytes:
        data = super().read(offset, length)
        lo, hi = max(offset, 8), min(offset + len(data), 20)  # backing offset (8), size (4)
        if lo < hi:
            data = data[: lo - offset] + bytes(hi - lo) + data[hi - offset :]
        return data


def inspect_disk(importer: Importer, path: Path, entry: NodeEntry) -> None:
    """Judge an archived disk before qemu opens it for anything but its header."""
    label, cap = f"nodes/{entry.name}.qcow2", importer.limits.max_virtual_size
    if entry.disk == "blank":
        found = inspect_file(path, display_name=label, max_virtual_size=cap)
        if found.format is not ImageFormat.QCOW2:
            raise UnsafeImage(f"the archive's {label} is {found.format.value}, not qcow2")
        importer.examine(path, label, found)
        return
    expected = placeholder(entry).encode()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        src = _HiddenBacking(fd)
        head = os.pread(fd, _QCOW.size, 0)
        if len(head) < _QCOW.size or head[:4] != b"QFI\xfb":
            raise UnsafeImage(f"the archive's {label} is not a qcow2 overlay")
        _magic, _version, offset, size, bits = _QCOW.unpack(head)
        named = b""
        if offset >= 72 and 9 <= bits <= 21 and size <= 1023 and offset + size <= 1 << bits:
            named = os.pread(fd, size, offset)
        if named != expected:
            raise UnsafeImage(
                f"the archive's {label} (node {entry.name}'s disk) names the backing file "
                f"{quoted(named)}, not its base image's placeholder {expected.decode()}; "
                "refusing a disk that would make qemu read another file"
            )
        found = inspect_source(src, display_name=label, max_virtual_size=cap)
        if found.format is not ImageFormat.QCOW2:
            raise UnsafeImage(f"the archive's {label} is not a qcow2 overlay")
    finally:
        os.close(fd)


def adopt_disk(
    qemu_img: QemuImg, path: Path, entry: NodeEntry, base: ImageRecord, base_path: Path
) -> None:
    """Point an inspected overlay at this catalog's base file; qemu-img must then agree."""
    label = f"the archive's nodes/{entry.name}.qcow2"
    if entry.disk == "blank":
        if base.kind != ImageKind.CDROM:
            raise InvalidRequest(f"{label} is blank but its image {base.name} is no CD-ROM")
        return
    if base.kind != ImageKind.DISK or base.format != "qcow2":
        raise InvalidRequest(f"{label} is an overlay but {base.name} is no qcow2 disk image")
    target = str(base_path.absolute())
    try:
        rebase(qemu_img, path, target)
    except ToolFailure as exc:
        raise CorruptImage(f"{label} cannot be pointed at {base.name}: {exc.stderr}") from exc
    info = qemu_img.info(path, "qcow2")
    seen = (info.format, info.backing_filename, info.raw.get("backing-filename-format"))
    if seen != ("qcow2", target, "qcow2") or info.data_file or info.encrypted:
        raise UnsafeImage(f"{label}: qemu-img reads it differently from the inspector")
    check = qemu_img.check(path, "qcow2")
    if check.damaged:
        raise CorruptImage(f"{label} is damaged: qemu-img check says {check.message[:300]}")


def keep_snapshots(qemu_img: QemuImg, copy: Path, keep: set[str]) -> set[str]:
    """Delete from a disk's copy the snapshots not in ``keep``; the tags left in it."""
    held = qemu_img.snapshots(copy)
    for tag in held:
        if tag not in keep:
            qemu_img.delete_snapshot(copy, tag)
    return set(held) & keep


def check_snapshots(qemu_img: QemuImg, path: Path, entry: NodeEntry, keep: bool) -> dict[str, int]:
    """The archived disk's checkpoints must be the manifest's; their sizes as the disk says.
    Without ``keep``, they are deleted from the disk instead (and none is returned)."""
    held = qemu_img.snapshots(path)
    listed = {c.tag for c in entry.checkpoints}
    if set(held) != listed:
        raise InvalidRequest(
            f"the archive's nodes/{entry.name}.qcow2 holds the checkpoints "
            f"{', '.join(quoted(t) for t in sorted(held)) or 'none'} but its manifest lists "
            f"{', '.join(sorted(listed)) or 'none'}; the archive is damaged or was altered"
        )
    if not keep:
        for tag in held:
            qemu_img.delete_snapshot(path, tag)
        return {}
    return held


def put_in_place(disk: Path, target: Path) -> None:
    """Swap a node's fresh disk for the archived one in one rename."""
    fresh = target.with_name(f".{target.name}.import")
    try:
        os.replace(disk, fresh)
    except OSError:  # another file system: copy first
        shutil.copyfile(disk, fresh)
    with fresh.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(fresh, target)
