"""QEMU's own formats: qcow2 (v2, v3) accepted; qcow (v1) and QED refused.

Layout and rules from qemu ``docs/interop/qcow2.txt`` and ``block/qcow2.c`` (qemu 7.2). All
header fields are big-endian.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import NoReturn

from virtlab.images.formats import ImageFormat

from .result import Inspection
from .source import ImageSource
from .verdict import Subject, quoted

__all__ = ["QCOW_MAGIC", "QED_MAGIC", "inspect_qcow2", "refuse_qed"]

QCOW_MAGIC = b"QFI\xfb"
QED_MAGIC = b"QED\x00"

# Bytes 0..71, common to v2 and v3: magic, version, backing_file_offset, backing_file_size,
# cluster_bits, size, crypt_method, l1_size, l1_table_offset, refcount_table_offset,
# refcount_table_clusters, nb_snapshots, snapshots_offset.
_V2 = struct.Struct(">4sIQIIQIIQQIIQ")
# Bytes 72..103, v3 only: incompatible_features, compatible_features, autoclear_features,
# refcount_order, header_length. Byte 104 (if header_length > 104) is compression_type.
_V3 = struct.Struct(">QQQII")

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_KNOWN = (1 << 5) - 1
COMPAT_LAZY_REFCOUNTS = 1 << 0
AUTOCLEAR_BITMAPS = 1 << 0

# Header extension types (qcow2.txt, "Header extensions").
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_NAMES = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441

CRYPT_NAMES = {1: "AES", 2: "LUKS"}
MAX_BACKING_NAME = 1023  # qemu: "Backing file name too long"
MAX_L1_BYTES = 32 * 1024 * 1024  # QCOW_MAX_L1_SIZE
MAX_REFTABLE_BYTES = 8 * 1024 * 1024  # QCOW_MAX_REFTABLE_SIZE
MAX_SNAPSHOTS = 65536  # QCOW_MAX_SNAPSHOTS
MAX_SIZE = 1 << 63  # qemu's sizes are int64_t


@dataclass
class _Header:
    version: int
    backing_offset: int
    backing_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_offset: int
    reftable_offset: int
    reftable_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible: int = 0
    compatible: int = 0
    autoclear: int = 0
    refcount_order: int = 4
    header_length: int = 72
    compression_type: int = 0

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits


@dataclass
class _Extensions:
    data_file: bytes | None = None
    crypto: bool = False
    bitmaps: tuple[int, int, int] | None = None  # (count, directory size, directory offset)
    found: list[int] = field(default_factory=list)


def refuse_qed(src: ImageSource, subject: Subject) -> NoReturn:
    raise subject.unsupported(
        "a QED image",
        "(QEMU Enhanced Disk), a format virtlab does not accept",
        f"convert it where it was made: qemu-img convert -f qed -O qcow2 {subject.arg} disk.qcow2",
    )


def inspect_qcow2(src: ImageSource, subject: Subject) -> Inspection:
    """Parse and judge a file that starts with ``QFI\\xfb``."""
    head = src.read(0, 112)
    version = struct.unpack(">I", head[4:8])[0] if len(head) >= 8 else 0
    if version == 1:
        raise subject.unsupported(
            "a qcow image (version 1)",
            "in an obsolete format virtlab does not accept",
            f"convert it where it was made: qemu-img convert -f qcow -O qcow2 {subject.arg} "
            "disk.qcow2",
        )
    if version not in (2, 3):
        raise subject.unsupported(
            f"a qcow2 image (version {version})" if version else "a qcow2 image",
            "of a version virtlab does not know (only 2 and 3)",
        )
    what = f"a qcow2 image (v{version})"
    need = 72 if version == 2 else 104
    if len(head) < need:
        raise subject.corrupt(what, f"whose header is cut short ({len(head)} of {need} bytes)")
    hdr = _parse_header(head, version)
    if not 9 <= hdr.cluster_bits <= 21:
        raise subject.corrupt(what, f"with an impossible cluster size (2^{hdr.cluster_bits})")
    if hdr.backing_offset:
        _refuse_backing(src, subject, hdr)
    if hdr.crypt_method:
        method = CRYPT_NAMES.get(hdr.crypt_method, f"method {hdr.crypt_method}")
        raise subject.unsafe(
            what,
            f"encrypted with {method}; virtlab cannot check what is inside an encrypted image",
            "decrypt it first (qemu-img convert with its key, to a plain qcow2)",
        )
    if version == 3:
        _check_header_length(subject, what, hdr)
    ext = _read_extensions(src, subject, what, hdr)
    _judge_features(subject, what, hdr, ext)
    _check_tables(src, subject, what, hdr, ext)
    return Inspection(
        format=ImageFormat.QCOW2,
        variant=f"v{version}",
        virtual_size=hdr.size,
        features=_features(hdr, ext),
    )


def _parse_header(head: bytes, version: int) -> _Header:
    hdr = _Header(*_V2.unpack_from(head)[1:])
    if version == 3:
        (hdr.incompatible, hdr.compatible, hdr.autoclear, hdr.refcount_order, hdr.header_length) = (
            _V3.unpack_from(head, 72)
        )
        if hdr.header_length > 104 and len(head) > 104:
            hdr.compression_type = head[104]
    return hdr


def _refuse_backing(src: ImageSource, subject: Subject, hdr: _Header) -> NoReturn:
    what = f"a qcow2 image (v{hdr.version})"
    end = hdr.backing_offset + hdr.backing_size
    if hdr.backing_size > MAX_BACKING_NAME or end > min(hdr.cluster_size, src.size):
        raise subject.corrupt(
            what, "whose backing file name lies outside its header (it has a backing file)"
        )
    name = src.read(hdr.backing_offset, hdr.backing_size)
    kind = "a backing file"
    if name.startswith(b"json:"):
        kind = "a backing file given as json: options"
    raise subject.outside("a qcow2 image", f"with {kind} ({quoted(name)})", subject.flatten())


def _check_header_length(subject: Subject, what: str, hdr: _Header) -> None:
    if hdr.header_length < 104 or hdr.header_length % 8 or hdr.header_length > hdr.cluster_size:
        raise subject.corrupt(what, f"with an impossible header length ({hdr.header_length})")


def _read_extensions(src: ImageSource, subject: Subject, what: str, hdr: _Header) -> _Extensions:
    """Walk the header extensions: from the header's end to the backing name or cluster end."""
    start = hdr.header_length if hdr.version == 3 else 72
    end = min(hdr.cluster_size, src.size)
    data = src.read(0, end)
    ext = _Extensions()
    offset = start
    while offset + 8 <= end:
        kind, length = struct.unpack_from(">II", data, offset)
        offset += 8
        if kind == EXT_END:
            return ext
        if length > end - offset:
            raise subject.corrupt(
                what, f"with a header extension (0x{kind:08x}) that runs past its first cluster"
            )
        body = data[offset : offset + length]
        ext.found.append(kind)
        if kind == EXT_DATA_FILE:
            ext.data_file = body
        elif kind == EXT_CRYPTO:
            ext.crypto = True
        elif kind == EXT_BITMAPS and length >= 24:
            count, _reserved, dir_size, dir_offset = struct.unpack_from(">IIQQ", body)
            ext.bitmaps = (count, dir_size, dir_offset)
        offset += (length + 7) & ~7
    if src.size < hdr.cluster_size:
        # No end marker, and the first cluster itself is cut short.
        raise subject.corrupt(what, "whose header extensions run past the end of the file")
    return ext  # qemu stops at the end of the first cluster too


def _judge_features(subject: Subject, what: str, hdr: _Header, ext: _Extensions) -> None:
    if hdr.incompatible & INCOMPAT_DATA_FILE or ext.data_file is not None:
        shown = f" ({quoted(ext.data_file)})" if ext.data_file else ""
        raise subject.outside(
            "a qcow2 image", f"with an external data file{shown}", subject.flatten()
        )
    if ext.crypto:
        raise subject.unsafe(
            what,
            "with an encryption header; virtlab cannot check what is inside an encrypted image",
            "decrypt it first (qemu-img convert with its key, to a plain qcow2)",
        )
    if hdr.incompatible & INCOMPAT_CORRUPT:
        raise subject.corrupt(
            what,
            "marked corrupt by qemu (its metadata is inconsistent)",
            f"repair it where it was made (qemu-img check -r all {subject.arg}) and upload "
            "it again",
        )
    unknown = hdr.incompatible & ~INCOMPAT_KNOWN
    if unknown:
        raise subject.unsafe(
            what,
            f"with incompatible features virtlab does not know (bits 0x{unknown:x})",
            f"convert it to a plain qcow2 where it was made: qemu-img convert -O qcow2 "
            f"{subject.arg} plain.qcow2",
        )
    if hdr.version == 3 and hdr.refcount_order > 6:
        raise subject.corrupt(what, f"with an impossible refcount order ({hdr.refcount_order})")
    zstd_bit = bool(hdr.incompatible & INCOMPAT_COMPRESSION)
    if hdr.compression_type not in (0, 1):
        raise subject.unsupported(
            what, f"with an unknown compression type ({hdr.compression_type})"
        )
    if zstd_bit != (hdr.compression_type == 1):
        raise subject.corrupt(what, "whose compression type and feature bits disagree")
    if hdr.incompatible & INCOMPAT_EXTL2 and hdr.cluster_bits < 14:
        raise subject.corrupt(what, "with extended L2 entries on clusters smaller than 16 KiB")


def _check_tables(
    src: ImageSource, subject: Subject, what: str, hdr: _Header, ext: _Extensions
) -> None:
    """The L1, refcount and snapshot tables must be where qemu would accept them: in the file."""
    if hdr.size >= MAX_SIZE:
        raise subject.corrupt(what, "with an impossible virtual size")
    cluster = hdr.cluster_size
    l2_entry = 16 if hdr.incompatible & INCOMPAT_EXTL2 else 8
    per_l1 = cluster * (cluster // l2_entry)  # guest bytes one L1 entry covers
    l1_needed = -(-hdr.size // per_l1)
    if hdr.l1_size * 8 > MAX_L1_BYTES:
        raise subject.corrupt(what, f"with an impossibly large L1 table ({hdr.l1_size} entries)")
    if hdr.l1_size < l1_needed:
        raise subject.corrupt(what, "whose L1 table is too small for its virtual size")
    if hdr.l1_size and (hdr.l1_offset % cluster or not src.holds(hdr.l1_offset, hdr.l1_size * 8)):
        raise subject.corrupt(what, "whose L1 table lies past the end of the file")
    reftable_bytes = hdr.reftable_clusters * cluster
    if not hdr.reftable_clusters or reftable_bytes > MAX_REFTABLE_BYTES:
        raise subject.corrupt(what, "with an impossible refcount table size")
    if hdr.reftable_offset % cluster or not src.holds(hdr.reftable_offset, reftable_bytes):
        raise subject.corrupt(what, "whose refcount table lies past the end of the file")
    if ext.bitmaps is not None and hdr.autoclear & AUTOCLEAR_BITMAPS:
        _count, dir_size, dir_offset = ext.bitmaps
        if dir_offset % cluster or not src.holds(dir_offset, dir_size):
            raise subject.corrupt(what, "whose bitmap directory lies past the end of the file")
    if hdr.nb_snapshots > MAX_SNAPSHOTS:
        raise subject.corrupt(what, f"with an impossible snapshot count ({hdr.nb_snapshots})")
    if hdr.nb_snapshots and (
        hdr.snapshots_offset % cluster or not src.holds(hdr.snapshots_offset, 40)
    ):
        raise subject.corrupt(what, "whose snapshot table lies past the end of the file")


def _features(hdr: _Header, ext: _Extensions) -> tuple[str, ...]:
    found = []
    if hdr.incompatible & INCOMPAT_DIRTY:
        found.append("dirty")  # qemu repairs refcounts on open; qemu-img check follows
    if hdr.compatible & COMPAT_LAZY_REFCOUNTS:
        found.append("lazy_refcounts")
    if hdr.nb_snapshots:
        found.append("snapshots")
    if ext.bitmaps is not None and hdr.autoclear & AUTOCLEAR_BITMAPS:
        found.append("bitmaps")
    if hdr.incompatible & INCOMPAT_EXTL2:
        found.append("extended_l2")
    if hdr.compression_type == 1:
        found.append("zstd")
    return tuple(found)
