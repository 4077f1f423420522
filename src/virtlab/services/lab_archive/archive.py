"""The archive file itself: the manifest's schema, writing the tar as a stream, and reading a
hostile one with a strict reader of our own.

The reader accepts only what ``virtlab lab archive`` writes: ustar or GNU headers with valid
checksums, regular files with the expected plain names (``nodes/`` and ``images/`` directory
entries are tolerated), each once. Links, devices, pax and GNU extension records (long names,
sparse files) are refused, so no member is larger than the bytes it occupies in the archive and
no header makes the reader hold more than 512 bytes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tarfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from virtlab.errors import InvalidRequest, TooLarge, ToolFailure
from virtlab.images.formats import ImageKind
from virtlab.images.inspect.verdict import quoted
from virtlab.names import NODE, UPLOAD
from virtlab.nodes.checkpoints import TAG_PATTERN
from virtlab.nodes.qemu.argv import MACHINE_PATTERN
from virtlab.topology import ResolvedLab

__all__ = [
    "FORMAT", "VERSION", "ArchiveStream", "CheckpointEntry", "ImageEntry", "Manifest", "Member",
    "Members", "NodeEntry", "check_consistent", "chunks_of", "extract", "load_manifest",
    "read_members", "read_small",
]  # fmt: skip

# Version 2 added the nodes' checkpoints; version 1 archives (none) are still read.
FORMAT, VERSION = "virtlab-lab-archive", 2
READABLE = (1, 2)
MAX_SMALL = 1 << 20  # manifest.json and lab.yaml
MAX_MEMBERS = 4096
CHUNK = 1 << 20
NAME = NODE.pattern.strip("^$")  # a node name (virtlab.names)
SHA = r"[0-9a-f]{64}"
_MEMBER = re.compile(rf"manifest\.json|lab\.yaml|nodes/{NAME}\.qcow2|images/{SHA}\.(qcow2|iso)")

Members = dict[str, tuple[int, int]]  # name -> (offset of its data, size)


# -- the manifest -------------------------------------------------------------------------------


def _plain(value: str) -> str:
    """An image's name on the server the archive comes from: its own rule may have been
    looser, but it becomes an upload's file name here (virtlab.names.UPLOAD)."""
    why = UPLOAD.problem(value)
    if why:
        raise ValueError(why)
    return value


ImageName = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_plain)]


class CheckpointEntry(BaseModel):
    """A checkpoint inside a node's archived disk (an internal snapshot of it)."""

    model_config = ConfigDict(extra="forbid")
    tag: str = Field(pattern=TAG_PATTERN)
    lab: bool  # one node's part of a lab checkpoint of that tag
    created_at: datetime
    ram_mb: int = Field(ge=16, le=1 << 20)
    vm_state_size: int = Field(ge=0)
    save_seconds: float = Field(ge=0)
    qemu_version: str = Field(pattern=r"^[0-9][0-9A-Za-z.+~-]{0,31}$")
    machine: str = Field(pattern=f"^(?:{MACHINE_PATTERN})$")
    accel: Literal["tcg", "kvm"]


class NodeEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=f"^{NAME}$")
    image: ImageName
    image_sha256: str = Field(pattern=f"^{SHA}$")
    disk: Literal["overlay", "blank"]  # blank: the install disk of a CD-ROM node
    checkpoints: list[CheckpointEntry] = Field(default_factory=list, max_length=MAX_MEMBERS)


class ImageEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: str = Field(pattern=f"^{SHA}$")
    name: ImageName
    kind: ImageKind
    included: bool  # whether images/<sha256>.<qcow2|iso> is in the archive

    @property
    def member(self) -> str:
        return f"images/{self.sha256}.{'iso' if self.kind is ImageKind.CDROM else 'qcow2'}"


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["virtlab-lab-archive"]
    version: Literal[1, 2]
    virtlab_version: str = Field(max_length=64)
    lab: str = Field(pattern=f"^{NAME}$")
    created_at: datetime
    nodes: list[NodeEntry] = Field(max_length=MAX_MEMBERS)
    images: list[ImageEntry] = Field(max_length=MAX_MEMBERS)


def load_manifest(raw: bytes) -> Manifest:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"the archive's manifest.json is not JSON: {exc}") from exc
    if isinstance(doc, dict) and doc.get("format") == FORMAT and doc.get("version") not in READABLE:
        raise InvalidRequest(
            f"the archive is format version {quoted(str(doc.get('version')))}; this virtlab "
            f"reads versions {' and '.join(map(str, READABLE))}"
        )
    try:
        return Manifest.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidRequest(f"the archive's manifest.json is invalid: {problems[:500]}") from exc


def check_consistent(manifest: Manifest, lab: ResolvedLab, members: Members) -> None:
    """The manifest, the lab file and the files present must tell the same story."""
    listed = {n.name: n for n in manifest.nodes}
    images = {i.sha256: i for i in manifest.images}
    if len(listed) != len(manifest.nodes) or len(images) != len(manifest.images):
        raise InvalidRequest("the archive's manifest lists a node or an image twice")
    if {n.name: n.image for n in lab.nodes} != {name: n.image for name, n in listed.items()}:
        raise InvalidRequest("the archive's manifest and lab.yaml disagree on the nodes")
    for node in manifest.nodes:
        image = images.get(node.image_sha256)
        if image is None or image.name != node.image:
            raise InvalidRequest(f"the archive's manifest lists no image for node {node.name}")
        if (node.disk == "blank") != (image.kind is ImageKind.CDROM):
            raise InvalidRequest(f"node {node.name}'s disk kind does not fit its image")
        tags = [c.tag for c in node.checkpoints]
        if len(set(tags)) != len(tags):
            raise InvalidRequest(f"the archive's manifest lists a checkpoint of {node.name} twice")
    expected = {"manifest.json", "lab.yaml", *(f"nodes/{n}.qcow2" for n in listed),
                *(i.member for i in manifest.images if i.included)}  # fmt: skip
    if set(members) != expected:
        odd = sorted(set(members) ^ expected)
        raise InvalidRequest(f"the archive's files do not match its manifest: {', '.join(odd)}")


# -- writing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    data: bytes | None = None  # small members are held in memory,
    path: Path | None = None  # the disks are read from their files as they are sent


class ArchiveStream:
    """A prepared archive: its exact size, its bytes as they are read. Its temporary copies
    (``work``) go when the stream ends or is dropped, or on ``close``."""

    def __init__(self, members: list[Member], work: Path) -> None:
        self.members, self.work, self._closed = members, work, False
        self.size = sum(512 + m.size + (-m.size % 512) for m in members) + 1024

    def chunks(self) -> Iterator[bytes]:
        try:
            now = int(time.time())
            for m in self.members:
                info = tarfile.TarInfo(m.name)
                info.size, info.mtime, info.mode, info.uname = m.size, now, 0o644, "virtlab"
                yield info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")
                if m.data is not None:
                    yield m.data
                else:
                    assert m.path is not None
                    yield from _read_exact(m.path, m.size)
                if m.size % 512:
                    yield bytes(-m.size % 512)
            yield bytes(1024)
        finally:
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            shutil.rmtree(self.work, ignore_errors=True)


def _read_exact(path: Path, size: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        while size > 0:
            block = f.read(min(CHUNK, size))
            if not block:
                raise ToolFailure(f"{path.name} shrank while it was archived")
            size -= len(block)
            yield block


# -- reading ------------------------------------------------------------------------------------


def read_members(archive: Path) -> Members:
    """Every member's place in the archive; refuses anything a lab archive does not hold."""
    members: Members = {}
    with archive.open("rb") as f:
        total, offset = os.fstat(f.fileno()).st_size, 0
        while True:
            block = os.pread(f.fileno(), 512, offset)
            if len(block) < 512 or (offset == 0 and not _is_header(block)):
                what = "is cut short" if offset else "is not a tar file"
                raise InvalidRequest(
                    f"the upload {what}; a lab archive is made by `virtlab lab archive`"
                )
            if block == bytes(512):
                return members
            if not _is_header(block):
                raise InvalidRequest(f"the archive is damaged at byte {offset}")
            name, size, kind = _header(block)
            offset += 512
            if kind == b"5" and name in ("nodes/", "images/") and size == 0:
                continue
            if kind not in (b"0", b"\0"):
                raise InvalidRequest(
                    f"the archive holds {quoted(name)}, which is not a regular file (type "
                    f"{quoted(kind)}); a lab archive holds regular files only"
                )
            if not _MEMBER.fullmatch(name):
                raise InvalidRequest(f"the archive holds {quoted(name)}: no lab archive file")
            if name in members or len(members) >= MAX_MEMBERS:
                raise InvalidRequest(f"the archive holds {quoted(name)} twice, or too many files")
            if offset + size > total:
                raise InvalidRequest(f"the archive is cut short in {quoted(name)}")
            members[name] = (offset, size)
            offset += size + (-size % 512)


def _is_header(block: bytes) -> bool:
    if block[257:263] not in (b"ustar\x00", b"ustar "):
        return block == bytes(512)
    try:
        stored = int(block[148:156].strip(b"\0 ") or b"0", 8)
    except ValueError:
        return False
    return stored == sum(block[:148]) + 8 * 0x20 + sum(block[156:])


def _header(block: bytes) -> tuple[str, int, bytes]:
    raw = block[:100].split(b"\0", 1)[0]
    if block[257:263] == b"ustar\x00" and block[345] != 0:  # POSIX ustar: a name prefix
        raw = block[345:500].split(b"\0", 1)[0] + b"/" + raw
    name = raw.decode("latin-1")
    field = block[124:136]
    if field[0] & 0x80:  # GNU base-256 (8 GiB and more); 0xff starts a negative number
        if field[0] == 0xFF:
            raise InvalidRequest(f"the archive member {quoted(name)} has a negative size")
        size = int.from_bytes(field[1:], "big")
    else:
        try:
            size = int(field.strip(b"\0 ") or b"0", 8)
        except ValueError as exc:
            raise InvalidRequest(f"the archive member {quoted(name)} has no size") from exc
    return name, size, block[156:157]


def read_small(archive: Path, members: Members, name: str) -> bytes:
    """A small member (manifest.json, lab.yaml), read whole after its size is checked."""
    if name not in members:
        raise InvalidRequest(f"the archive has no {name}: it is no lab archive")
    offset, size = members[name]
    if size > MAX_SMALL:
        raise TooLarge(f"the archive's {name} is {size} bytes, past the limit of {MAX_SMALL}")
    with archive.open("rb") as f:
        return os.pread(f.fileno(), size, offset)


async def chunks_of(archive: Path, where: tuple[int, int]) -> AsyncIterator[bytes]:
    """A member's bytes, as an upload's chunks."""
    offset, size = where
    with archive.open("rb") as f:
        while size > 0:
            block = await asyncio.to_thread(os.pread, f.fileno(), min(CHUNK, size), offset)
            if not block:
                raise InvalidRequest("the archive is cut short")
            offset, size = offset + len(block), size - len(block)
            yield block


def extract(archive: Path, where: tuple[int, int], dest: Path) -> None:
    """Copy a member to ``dest`` (in the kernel: ``copy_file_range``)."""
    offset, size = where
    with archive.open("rb") as src, dest.open("wb") as out:
        while size > 0:
            done = os.copy_file_range(src.fileno(), out.fileno(), min(size, 1 << 30), offset)
            if done <= 0:
                raise InvalidRequest("the archive is cut short")
            offset, size = offset + done, size - done
