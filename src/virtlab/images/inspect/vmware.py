"""VMware VMDK: single-file hosted sparse extents accepted, anything naming other files refused.

Layout from VMware's "Virtual Disk Format 1.1" (hosted sparse extent header, little-endian)
and qemu's ``block/vmdk.c`` (qemu 7.2), whose behaviour decides what is dangerous:

* a header with ``capacity == 0`` and an embedded descriptor makes qemu parse that descriptor
  like a descriptor file, opening every extent it names;
* for any sparse file qemu reads 10 KiB at offset 0x200 and follows a ``parentFileNameHint``
  found there as a backing file, whatever the header says about the descriptor;
* a text descriptor file holds no data: all of it lives in the extent files it names.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import NoReturn

from virtlab.images.formats import ImageFormat

from .result import Inspection
from .source import ImageSource
from .verdict import Subject, quoted

__all__ = [
    "COWD_MAGIC",
    "KDMV_MAGIC",
    "Descriptor",
    "inspect_sparse",
    "looks_like_descriptor",
    "parse_descriptor",
    "refuse_cowd",
    "refuse_descriptor_file",
]

KDMV_MAGIC = b"KDMV"
COWD_MAGIC = b"COWD"

# SparseExtentHeader: magic, version, flags, capacity, grainSize, descriptorOffset,
# descriptorSize, numGTEsPerGT, rgdOffset, gdOffset, overHead, uncleanShutdown,
# 4 newline-check chars, compressAlgorithm. Sizes and offsets are in 512-byte sectors.
_HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")
_MARKER = struct.Struct("<QII")  # value, size, type: a 512-byte stream marker
GD_AT_END = 0xFFFFFFFFFFFFFFFF
FLAG_NL_DETECT = 1 << 0
FLAG_RGD = 1 << 1
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17
NL_CHECK = b"\n \r\n"
MARKER_EOS, MARKER_FOOTER = 0, 3
SINGLE_FILE_TYPES = {"monolithicsparse": "monolithicSparse", "streamoptimized": "streamOptimized"}
DESC_MAX = (1 << 20) - 1  # qemu: the largest descriptor it reads
PARENT_SCAN = 0x200, 20 * 512  # qemu vmdk_parent_open(): DESC_SIZE bytes at desc_offset 0x200
MAX_SECTORS = 1 << 54  # 2^63 bytes: anything larger is not a disk

_EXTENT = re.compile(
    r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Za-z]+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$', re.I
)
_KEY = re.compile(r"^([A-Za-z][\w.]*)\s*=\s*(.*)$")


@dataclass(frozen=True)
class Extent:
    access: str
    sectors: int
    kind: str  # SPARSE, FLAT, ZERO, VMFS, VMFSSPARSE, ...
    filename: str | None


@dataclass(frozen=True)
class Descriptor:
    create_type: str | None
    extents: tuple[Extent, ...]
    parent_hint: str | None
    parent_cid: str | None


def parse_descriptor(text: str) -> Descriptor:
    """Read a VMDK text descriptor (the ``# Disk DescriptorFile`` format)."""
    keys: dict[str, str] = {}
    extents = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _EXTENT.match(line)
        if match:
            access, sectors, kind, name, _offset = match.groups()
            extents.append(Extent(access.upper(), int(sectors), kind.upper(), name))
            continue
        match = _KEY.match(line)
        if match:
            keys[match.group(1).lower()] = match.group(2).strip().strip('"')
    return Descriptor(
        create_type=keys.get("createtype"),
        extents=tuple(extents),
        parent_hint=keys.get("parentfilenamehint"),
        parent_cid=keys.get("parentcid"),
    )


def looks_like_descriptor(head: bytes) -> bool:
    """Whether text at the start of a file is a VMDK descriptor (as qemu's probe would think)."""
    text = head[:4096].split(b"\0", 1)[0].decode("latin-1")
    return bool(
        "# Disk DescriptorFile" in text
        or re.search(r"(?mi)^\s*createType\s*=", text)
        or re.search(r"(?m)^version=[123]\r?$", text)
    )


def refuse_descriptor_file(src: ImageSource, subject: Subject) -> NoReturn:
    """A text descriptor: every byte of the disk is in other files."""
    text = src.read(0, DESC_MAX).split(b"\0", 1)[0].decode("latin-1")
    desc = parse_descriptor(text)
    kind = desc.create_type or "descriptor only"
    raise _separate_files(subject, kind, desc.extents)


def refuse_cowd(src: ImageSource, subject: Subject) -> NoReturn:
    raise subject.unsupported(
        "a VMDK (COWD, an ESX sparse extent)",
        "in a variant virtlab does not accept (only monolithicSparse and streamOptimized)",
        f"convert it where it was made: qemu-img convert -f vmdk -O qcow2 {subject.arg} disk.qcow2",
    )


def _separate_files(subject: Subject, kind: str, extents: tuple[Extent, ...]) -> Exception:
    names = [e.filename for e in extents if e.filename]
    noun = "extents are separate files" if len(names) > 1 else "extent is a separate file"
    todo = subject.flatten()
    if names:
        shown = ", ".join(quoted(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
        todo = todo.replace("its other files are", f"its other files are ({shown})")
    return subject.outside(f"a VMDK ({kind})", f"whose {noun}", todo)


@dataclass(frozen=True)
class _Header:
    version: int
    flags: int
    capacity: int
    grain: int
    desc_offset: int
    desc_size: int
    gtes_per_gt: int
    rgd_offset: int
    gd_offset: int
    overhead: int
    nl_check: bytes
    compression: int


def _header(data: bytes) -> _Header:
    fields = _HEADER.unpack_from(data)
    return _Header(*fields[1:11], fields[12], fields[13])


def inspect_sparse(src: ImageSource, subject: Subject) -> Inspection:
    """Parse and judge a hosted sparse extent (``KDMV``)."""
    data = src.read_exact(0, 512)
    if data is None:
        raise subject.corrupt("a VMDK", "whose header is cut short")
    hdr = _header(data)
    if not 1 <= hdr.version <= 3:
        raise subject.unsupported(f"a VMDK (version {hdr.version})", "of an unknown version")
    desc = _embedded_descriptor(src, subject, hdr)
    _refuse_parent(src, subject)
    if hdr.gd_offset == GD_AT_END:
        hdr = _footer_header(src, subject, hdr)
    variant = _variant(subject, hdr, desc)
    what = f"a VMDK ({variant})"
    if desc is not None:
        _judge_descriptor(subject, variant, hdr, desc)
    _check_geometry(src, subject, what, hdr)
    compressed = hdr.flags & FLAG_COMPRESSED
    return Inspection(
        format=ImageFormat.VMDK,
        variant=variant,
        virtual_size=hdr.capacity * 512,
        features=("compressed",) if compressed else (),
    )


def _embedded_descriptor(src: ImageSource, subject: Subject, hdr: _Header) -> Descriptor | None:
    if not hdr.desc_offset:
        return None
    offset, size = hdr.desc_offset * 512, min(hdr.desc_size * 512, DESC_MAX)
    if not size or not src.holds(offset, size):
        raise subject.corrupt("a VMDK", "whose embedded descriptor lies past the end of the file")
    raw = src.read(offset, size).split(b"\0", 1)[0]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise subject.corrupt("a VMDK", "whose embedded descriptor is not text") from None
    return parse_descriptor(text)


def _refuse_parent(src: ImageSource, subject: Subject) -> None:
    offset, size = PARENT_SCAN
    text = src.read(offset, size).split(b"\0", 1)[0]
    match = re.search(rb'parentFileNameHint\s*=\s*"([^"]*)', text)
    if match is not None or b"parentFileNameHint" in text:
        name = quoted(match.group(1)) if match else "unreadable"
        raise subject.outside("a VMDK", f"with a parent disk ({name})", subject.flatten())


def _footer_header(src: ImageSource, subject: Subject, hdr: _Header) -> _Header:
    """streamOptimized with gdOffset at the end: the real header is in the footer."""
    tail = src.tail(1536) if src.size >= 1536 + 512 else b""
    if len(tail) != 1536:
        raise subject.corrupt("a VMDK (streamOptimized)", "without its footer")
    _val, f_size, f_type = _MARKER.unpack_from(tail, 0)
    e_val, e_size, e_type = _MARKER.unpack_from(tail, 1024)
    footer = _header(tail[512:1024])
    if (
        tail[512:516] != KDMV_MAGIC
        or (f_size, f_type) != (0, MARKER_FOOTER)
        or (e_val, e_size, e_type) != (0, 0, MARKER_EOS)
        or footer.gd_offset == GD_AT_END
        or (footer.version, footer.desc_offset) != (hdr.version, hdr.desc_offset)
    ):
        raise subject.corrupt("a VMDK (streamOptimized)", "whose footer is damaged")
    return footer


def _variant(subject: Subject, hdr: _Header, desc: Descriptor | None) -> str:
    if desc is None:
        stream = hdr.flags & FLAG_COMPRESSED and hdr.flags & FLAG_MARKERS
        return "streamOptimized" if stream else "monolithicSparse"
    if desc.create_type is None:
        raise subject.corrupt("a VMDK", "whose embedded descriptor has no createType")
    variant = SINGLE_FILE_TYPES.get(desc.create_type.lower())
    if variant is None:
        raise _separate_files(subject, quoted(desc.create_type)[1:-1], desc.extents)
    return variant


def _judge_descriptor(subject: Subject, variant: str, hdr: _Header, desc: Descriptor) -> None:
    """The embedded descriptor may name exactly one extent: this file, by a bare name."""
    if desc.parent_hint or (desc.parent_cid or "ffffffff").lower() != "ffffffff":
        shown = quoted(desc.parent_hint) if desc.parent_hint else "by its CID"
        raise subject.outside(
            f"a VMDK ({variant})", f"with a parent disk ({shown})", subject.flatten()
        )
    if hdr.capacity == 0 and desc.extents:
        # qemu would open every extent of this descriptor by name (vmdk_open_vmdk4).
        raise _separate_files(subject, variant, desc.extents)
    if len(desc.extents) != 1:
        if not desc.extents:
            raise subject.corrupt(f"a VMDK ({variant})", "whose descriptor lists no extent")
        raise _separate_files(subject, variant, desc.extents)
    extent = desc.extents[0]
    name = extent.filename or ""
    if extent.kind != "SPARSE" or not name or any(c in name for c in "/\\:"):
        raise _separate_files(subject, variant, desc.extents)
    if extent.sectors != hdr.capacity:
        raise subject.corrupt(
            f"a VMDK ({variant})", "whose descriptor and header disagree on its size"
        )


def _check_geometry(src: ImageSource, subject: Subject, what: str, hdr: _Header) -> None:
    if hdr.flags & FLAG_NL_DETECT and hdr.nl_check != NL_CHECK:
        raise subject.corrupt(
            what,
            "whose newline check bytes are damaged",
            "it was probably transferred in text mode; transfer it again in binary mode",
        )
    if hdr.compression not in (0, 1):
        raise subject.unsupported(what, f"with an unknown compression ({hdr.compression})")
    if hdr.capacity > MAX_SECTORS:
        raise subject.corrupt(what, "with an impossible capacity")
    grain = hdr.grain
    if not grain or grain & (grain - 1) or grain > 0x200000:
        raise subject.corrupt(what, f"with an impossible grain size ({grain} sectors)")
    if not 1 <= hdr.gtes_per_gt <= 512:
        raise subject.corrupt(what, f"with an impossible grain table size ({hdr.gtes_per_gt})")
    gd_entries = -(-hdr.capacity // (hdr.gtes_per_gt * grain))
    tables = [hdr.gd_offset]
    if hdr.flags & FLAG_RGD:
        tables.append(hdr.rgd_offset)
    for offset in tables:
        if not offset or not src.holds(offset * 512, gd_entries * 4):
            raise subject.corrupt(what, "whose grain directory lies past the end of the file")
