"""Lab archives: one tar file with a lab, its node disks and, optionally, its base images.

The archive is an uncompressed tar (qcow2 clusters that were never written take no room, and a
disk's data rarely shrinks much under a general compressor) of regular files only::

    manifest.json                  format and version, virtlab version, lab name, created_at;
                                   per node: name, image name, image sha256, disk (overlay, or
                                   blank: a CD-ROM node's install disk); per image: sha256,
                                   name, kind, whether the archive includes it
    lab.yaml                       the lab as a topology file (``LabService.export``)
    nodes/<node>.qcow2             each node's disk as it is, its checkpoints inside (internal
                                   snapshots; the manifest lists them with their records); an
                                   overlay's backing file is the relative placeholder
                                   ``<sha256>.qcow2`` of its base image
    images/<sha256>.<qcow2|iso>    with images: each base image's catalog file, as stored

Export needs every node stopped or crashed: a running disk changes under the copy. The disks
are copied to a staging directory (see ``disks``; a libvirt host's are downloaded, see
``remote``); the tar is streamed from those copies and from the catalog's files, with its exact
size known beforehand, never built whole.

Import treats the archive as hostile input (``archive``: a strict reader; ``disks``: overlays
inspected before qemu opens them). Base images are found in the catalog by sha256, or imported
from the archive through the normal import pipeline; then the lab is deployed stopped (images
renamed to this catalog's names; nodes on the hosts the lab file names, or placed) and each
node's fresh disk swapped for the archived one (uploaded over it on a libvirt host). A
failure before the deploy leaves no lab; after it, the lab is destroyed. Images imported on
the way stay in the catalog: they passed every check of an upload and may serve again.

Checkpoints: a disk must hold exactly the checkpoints its manifest entry lists (an export drops
from its copy any snapshot the catalog has no ready record of); their records are made for the
imported nodes. ``checkpoints=False`` deletes them from the disks instead: a checkpoint's
machine state is loaded by QEMU as it is, like an incoming migration, which QEMU does not
treat as a security boundary, so an archive from a source not trusted that far is better
imported without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from virtlab import __version__
from virtlab.catalog import ImageRecord, NodeRecord
from virtlab.catalog.checkpoints import READY, CheckpointRecord
from virtlab.catalog.labs import LabRecord
from virtlab.errors import Conflict, CorruptImage, NotFound
from virtlab.images.formats import ImageKind
from virtlab.images.progress import ImportJob
from virtlab.images.qemu_img import QemuImg
from virtlab.images.receive import receive
from virtlab.images.store import Staging
from virtlab.names import LAB
from virtlab.nodes.spec import LOCAL_HOST, RunPaths
from virtlab.nodes.state import NodeState
from virtlab.services.checkpoints import CheckpointService
from virtlab.services.images import ImageService
from virtlab.services.labs import LabService
from virtlab.services.limits import SYSTEM, Requester
from virtlab.services.nodes import NodeService
from virtlab.topology import export_yaml, load_lab

from . import disks
from . import remote as hosted
from .archive import (
    FORMAT,
    VERSION,
    ArchiveStream,
    CheckpointEntry,
    ImageEntry,
    Manifest,
    Member,
    Members,
    NodeEntry,
    check_consistent,
    chunks_of,
    extract,
    load_manifest,
    read_members,
    read_small,
)  # fmt: skip

__all__ = ["ArchiveStream", "LabArchiver", "LabImport", "Manifest"]

_QUIET = (NodeState.STOPPED, NodeState.CRASHED)


@dataclass(frozen=True)
class LabImport:
    lab: LabRecord
    images_imported: list[str]  # new catalog images, from the archive
    images_reused: list[str]  # catalog images that were already here (same sha256)


class LabArchiver:
    def __init__(
        self, labs: LabService, nodes: NodeService, images: ImageService, qemu_img: QemuImg,
        work_dir: Path, *, checkpoints: CheckpointService,
    ) -> None:  # fmt: skip
        self.labs, self.nodes, self.images, self.qemu_img = labs, nodes, images, qemu_img
        self.checkpoints = checkpoints
        self.work_dir = work_dir  # DATA/staging: swept at start-up
        self._importing = asyncio.Lock()  # one at a time: two could import one image twice

    def _new_work(self) -> Path:
        path = self.work_dir / f"lab-archive-{uuid.uuid4().hex}"
        path.mkdir(parents=True)
        return path

    def _discard(self, work: Path) -> None:
        self.images.store.discard(Staging(work))

    # -- export -------------------------------------------------------------------------------

    async def open_export(self, lab_name: str, *, with_images: bool) -> ArchiveStream:
        """Check the nodes, copy their disks and prepare the tar. Iterate its ``chunks()``
        (which removes the copies when done) or ``close()`` it."""
        lab = self.labs.get(lab_name)
        nodes = sorted(self.labs.summary(lab).nodes, key=lambda n: n.name)
        self._require_quiet(lab.name, nodes)
        bases = {n.name: self.images.get(n.image) for n in nodes}
        used = {b.sha256: b for b in bases.values()}
        files = {sha: self.images.store.absolute(b.path) for sha, b in used.items()}
        missing = [used[sha].name for sha, path in files.items() if not path.is_file()]
        if with_images and missing:
            raise Conflict(f"the file of {', '.join(missing)} is missing; virtlab image verify")
        yaml_text = self.labs.export(lab.name)
        work = self._new_work()
        try:
            remote = [n for n in nodes if n.host != LOCAL_HOST]
            for node in remote:  # a libvirt host's: downloaded through libvirt
                await hosted.fetch(self.nodes, self.qemu_img, node, work / f"{node.name}.qcow2")
            copies = await asyncio.to_thread(
                disks.copy_disks, self.qemu_img, self.nodes.nodes_dir, nodes, bases, work,
                frozenset(n.name for n in remote),
            )  # fmt: skip
            self._require_quiet(lab.name, [self.nodes.get(n.id) for n in nodes])
            saved = {}
            for node, (_, copy) in zip(nodes, copies, strict=True):
                rows = [r for r in self.checkpoints.of_node(node.id) if r.state == READY]
                kept = await asyncio.to_thread(
                    disks.keep_snapshots, self.qemu_img, copy, {r.tag for r in rows}
                )
                saved[node.name] = [r for r in rows if r.tag in kept]
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        manifest = Manifest(
            format=FORMAT, version=VERSION, virtlab_version=__version__, lab=lab.name,
            created_at=datetime.now(UTC),
            nodes=[_node_entry(n, bases[n.name], saved[n.name]) for n in nodes],
            images=[ImageEntry(sha256=b.sha256, name=b.name, kind=ImageKind(b.kind),
                               included=with_images) for b in used.values()],
        )  # fmt: skip
        small = {"manifest.json": manifest.model_dump_json(indent=2).encode(),
                 "lab.yaml": yaml_text.encode()}  # fmt: skip
        members = [Member(name, len(data), data=data) for name, data in small.items()]
        members += [Member(f"nodes/{n}.qcow2", p.stat().st_size, path=p) for n, p in copies]
        if with_images:
            members += [
                Member(e.member, files[e.sha256].stat().st_size, path=files[e.sha256])
                for e in manifest.images
            ]
        return ArchiveStream(members, work)

    async def export(self, lab_name: str, out: Path | BinaryIO, *, with_images: bool) -> int:
        """Write the archive to a file or an open binary stream; returns its size."""
        stream = await self.open_export(lab_name, with_images=with_images)

        def write(f: BinaryIO) -> int:
            for chunk in stream.chunks():
                f.write(chunk)
            return stream.size

        try:
            if isinstance(out, Path):
                with out.open("wb") as f:
                    return await asyncio.to_thread(write, f)
            return await asyncio.to_thread(write, out)
        finally:
            stream.close()

    def _require_quiet(self, lab: str, nodes: list[NodeRecord]) -> None:
        busy = [n.name for n in nodes if NodeState(n.state) not in _QUIET]
        if busy:
            raise Conflict(
                f"lab {lab}: {', '.join(busy)} must be stopped to be archived (a running "
                f"node's disk changes under the copy); `virtlab lab stop {lab}` first"
            )

    # -- import -------------------------------------------------------------------------------

    async def import_stream(
        self, chunks: AsyncIterator[bytes], *, expected_size: int | None = None,
        name: str | None = None, checkpoints: bool = True, owner_id: str | None = None,
        who: Requester = SYSTEM,
    ) -> LabImport:  # fmt: skip
        """Receive an uploaded archive into staging (under the upload cap), then import it
        (a lab of ``owner_id``'s). The whole of it is one import of ``who``'s (its images
        included): refused at once when no import slot is free."""
        with self.images.slots.take(who):
            return await self._import_stream(chunks, expected_size, name, checkpoints, owner_id)

    async def _import_stream(
        self, chunks: AsyncIterator[bytes], expected_size: int | None, name: str | None,
        checkpoints: bool, owner_id: str | None,
    ) -> LabImport:  # fmt: skip
        work = self._new_work()
        try:
            archive = work / "archive.tar"
            await receive(
                chunks, archive, label="the lab archive", max_bytes=self.images.max_upload_bytes,
                job=ImportJob(id="lab-archive", source_name="lab archive"),
                expected_size=expected_size,
            )  # fmt: skip
            return await self.import_(
                archive, name=name, checkpoints=checkpoints, owner_id=owner_id
            )
        finally:
            self._discard(work)

    async def import_(
        self, archive: Path, *, name: str | None = None, checkpoints: bool = True,
        owner_id: str | None = None,
    ) -> LabImport:  # fmt: skip
        """Make the archived lab here, stopped, named ``name`` if given, with its nodes'
        checkpoints unless ``checkpoints`` is false. All or nothing."""
        async with self._importing:
            work = self._new_work()
            try:
                return await self._import(archive, work, name, checkpoints, owner_id)
            finally:
                self._discard(work)

    async def _import(
        self, archive: Path, work: Path, name: str | None, keep_checkpoints: bool,
        owner_id: str | None,
    ) -> LabImport:  # fmt: skip
        members = await asyncio.to_thread(read_members, archive)
        manifest = load_manifest(read_small(archive, members, "manifest.json"))
        wanted = load_lab(read_small(archive, members, "lab.yaml").decode("utf-8", "replace"))
        check_consistent(manifest, wanted, members)
        lab_name = name or wanted.name
        with contextlib.suppress(NotFound):
            self.labs.get(lab_name)
            raise Conflict(f"a lab named {lab_name} already exists; import it under another name")
        LAB.check(lab_name)
        LAB.refuse_clash(lab_name, self.labs.names(), "this server")
        if self.nodes.quota is not None:  # before any disk is extracted or image imported
            what = f"lab {lab_name} ({len(manifest.nodes)} nodes)"
            self.nodes.quota.check(owner_id, len(manifest.nodes), what)
        copies = {e.name: work / f"{e.name}.qcow2" for e in manifest.nodes}
        for entry in manifest.nodes:
            where = members[f"nodes/{entry.name}.qcow2"]
            await asyncio.to_thread(extract, archive, where, copies[entry.name])
            await asyncio.to_thread(
                disks.inspect_disk, self.images.importer, copies[entry.name], entry
            )
        bases, imported, reused = await self._bases(archive, members, manifest)
        sizes: dict[str, dict[str, int]] = {}
        for entry in manifest.nodes:
            base = bases[entry.image_sha256]
            path = self.images.store.absolute(base.path)
            await asyncio.to_thread(
                disks.adopt_disk, self.qemu_img, copies[entry.name], entry, base, path
            )
            sizes[entry.name] = await asyncio.to_thread(
                disks.check_snapshots, self.qemu_img, copies[entry.name], entry, keep_checkpoints
            )
        local = {e.name: bases[e.image_sha256].name for e in manifest.nodes}
        nodes = tuple(replace(n, image=local[n.name]) for n in wanted.nodes)
        text = export_yaml(replace(wanted, name=lab_name, nodes=nodes))
        lab, changed = await self.labs.deploy(text, start=False, owner_id=owner_id)
        if not changed:  # made meanwhile by someone else: theirs, not ours to touch
            raise Conflict(f"a lab named {lab_name} already exists; import it under another name")
        try:
            entries = {e.name: e for e in manifest.nodes}
            for record in self.labs.summary(lab).nodes:
                if record.host != LOCAL_HOST:  # uploaded over its fresh volume there
                    await hosted.put(self.nodes, self.qemu_img, record, copies[record.name])
                else:
                    target = RunPaths(self.nodes.nodes_dir / record.id).disk
                    await asyncio.to_thread(disks.put_in_place, copies[record.name], target)
                for saved in entries[record.name].checkpoints if keep_checkpoints else []:
                    await self.checkpoints.add_row(
                        _checkpoint_row(saved, record, lab, sizes[record.name][saved.tag])
                    )
        except BaseException:
            await self.labs.destroy(lab.name)
            raise
        return LabImport(lab, imported, reused)

    async def _bases(
        self, archive: Path, members: Members, manifest: Manifest
    ) -> tuple[dict[str, ImageRecord], list[str], list[str]]:
        """Each base image, by sha256: the catalog's own, or imported from the archive."""
        catalog = self.images.list()
        found: dict[str, ImageRecord] = {}
        todo, missing = [], []
        for entry in manifest.images:
            same = (r for r in catalog if entry.sha256 in (r.sha256, r.source_sha256))
            local = next((r for r in same if r.kind == entry.kind), None)
            if local is not None:
                found[entry.sha256] = local
            elif entry.member in members:
                todo.append(entry)
            else:
                missing.append(f"{entry.name} (sha256 {entry.sha256})")
        if missing:
            raise NotFound(
                f"this server has no image {' nor '.join(missing)}, and the archive does not "
                "carry it: import that image first (`virtlab image import`), or archive the lab "
                "with its images (`virtlab lab archive --images`)"
            )
        reused = sorted({r.name for r in found.values()})
        imported = []
        for entry in todo:
            where = members[entry.member]
            source = re.sub(r"_\d{10,}(?=\.[A-Za-z0-9]+$)", "", entry.name)  # drop the ms
            records = await self.images.import_upload(
                chunks_of(archive, where), source, expected_size=where[1], held=True
            )
            if [(r.source_sha256, r.kind) for r in records] != [(entry.sha256, entry.kind)]:
                for record in records:
                    await asyncio.to_thread(self.images.delete, record.name)
                raise CorruptImage(
                    f"the archive's image {entry.name} is not the image its manifest names "
                    f"(sha256 {entry.sha256}); the archive is damaged or was altered"
                )
            found[entry.sha256] = records[0]
            imported.append(records[0].name)
        return found, imported, reused


def _node_entry(node: NodeRecord, base: ImageRecord, saved: list[CheckpointRecord]) -> NodeEntry:
    blank = base.kind == ImageKind.CDROM
    checkpoints = [
        CheckpointEntry(
            tag=r.tag, lab=r.lab_id is not None, created_at=r.created_at, ram_mb=r.ram_mb,
            vm_state_size=r.vm_state_size, save_seconds=r.save_seconds,
            qemu_version=r.qemu_version, machine=r.machine, accel=r.accel,  # type: ignore[arg-type]
        )
        for r in saved
    ]  # fmt: skip
    return NodeEntry(name=node.name, image=base.name, image_sha256=base.sha256,
                     disk="blank" if blank else "overlay", checkpoints=checkpoints)  # fmt: skip


def _checkpoint_row(
    saved: CheckpointEntry, node: NodeRecord, lab: LabRecord, size: int
) -> CheckpointRecord:
    return CheckpointRecord(
        id=uuid.uuid4().hex[:16], node_id=node.id, tag=saved.tag, state=READY,
        created_at=saved.created_at, ram_mb=saved.ram_mb,
        lab_id=lab.id if saved.lab else None, vm_state_size=size,
        save_seconds=saved.save_seconds, qemu_version=saved.qemu_version,
        machine=saved.machine, accel=saved.accel, detail="imported from a lab archive",
    )  # fmt: skip
