"""Microsoft VHD (Virtual PC, qemu's ``vpc``): dynamic and fixed accepted, differencing refused.

Layout from Microsoft's "Virtual Hard Disk Image Format Specification" (2006); the size rules
follow qemu's ``block/vpc.c`` (qemu 7.2). Everything is big-endian.

A dynamic VHD starts with a copy of its 512-byte footer and keeps the footer at its end; a fixed
VHD is raw data followed by the footer, so it is found at the end only.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from virtlab.images.formats import ImageFormat

from .result import Inspection
from .source import ImageSource
from .verdict import Subject, quoted

__all__ = ["VHD_COOKIE", "inspect_vhd"]

VHD_COOKIE = b"conectix"
DYNAMIC_COOKIE = b"cxsparse"
# Footer: cookie, features, version, data_offset, timestamp, creator_app, creator_version,
# creator_os, original_size, current_size, cylinders, heads, sectors/track, disk_type, checksum.
_FOOTER = struct.Struct(">8sIIQI4sIIQQHBBII")
_CHECKSUM_AT = 64
# Dynamic disk header: cookie, data_offset, table_offset, version, max_table_entries,
# block_size, checksum, parent_uuid(16), parent_timestamp, reserved, parent_name(512, UTF-16BE).
_DYNAMIC = struct.Struct(">8sQQIIII16sII512s")
_DYNAMIC_CHECKSUM_AT = 36
FIXED, DYNAMIC, DIFFERENCING = 2, 3, 4
MAX_GEOMETRY = 65535 * 16 * 255  # qemu VHD_MAX_GEOMETRY (sectors)
MAX_SECTORS = 0xFF000000  # qemu VHD_MAX_SECTORS: 2040 GiB
# Creator apps whose images mean footer.current_size rather than CHS (qemu vpc_open()).
SIZE_CREATORS = (b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0")


def vhd_checksum(block: bytes, at: int) -> int:
    """One's complement of the byte sum, the checksum field itself counted as zero."""
    return ~(sum(block) - sum(block[at : at + 4])) & 0xFFFFFFFF


@dataclass(frozen=True)
class _Footer:
    data_offset: int
    creator: bytes
    current_size: int
    cylinders: int
    heads: int
    sectors: int
    disk_type: int
    checksum: int


def _footer(block: bytes) -> _Footer:
    f = _FOOTER.unpack_from(block)
    return _Footer(f[3], f[5], f[9], f[10], f[11], f[12], f[13], f[14])


def inspect_vhd(src: ImageSource, subject: Subject) -> Inspection:
    """Judge a VHD whose footer is at the start (dynamic) or only at the end (fixed)."""
    at_start = src.read(0, 8) == VHD_COOKIE
    block = src.read_exact(0, 512) if at_start else src.read_exact(src.size - 512, 512)
    if block is None:
        raise subject.corrupt("a VHD", "whose footer is cut short")
    footer = _footer(block)
    if vhd_checksum(block, _CHECKSUM_AT) != footer.checksum:
        raise subject.corrupt("a VHD", "whose footer checksum is wrong")
    size = _virtual_size(footer)
    if footer.disk_type == FIXED:
        if at_start:
            raise subject.corrupt("a VHD (fixed)", "with a footer at its start")
        if size > src.size - 512:
            raise subject.corrupt("a VHD (fixed)", "that holds less data than its size")
        variant = "fixed"
    elif footer.disk_type in (DYNAMIC, DIFFERENCING):
        _check_dynamic(src, subject, footer, size)
        variant = "dynamic"
    else:
        raise subject.unsupported(f"a VHD (disk type {footer.disk_type})", "of an unknown type")
    if size > MAX_SECTORS * 512:
        raise subject.corrupt(f"a VHD ({variant})", "larger than the format allows (2040 GiB)")
    return Inspection(format=ImageFormat.VHD, variant=variant, virtual_size=size)


def _virtual_size(footer: _Footer) -> int:
    """What qemu shows the guest: CHS geometry, or current_size for some creators."""
    chs = footer.cylinders * footer.heads * footer.sectors
    if footer.creator in SIZE_CREATORS or chs == MAX_GEOMETRY:
        return footer.current_size // 512 * 512
    return chs * 512


def _check_dynamic(src: ImageSource, subject: Subject, footer: _Footer, size: int) -> None:
    what = "a VHD (differencing)" if footer.disk_type == DIFFERENCING else "a VHD (dynamic)"
    block = src.read_exact(footer.data_offset, 1024) if footer.data_offset < src.size else None
    if block is None or block[:8] != DYNAMIC_COOKIE:
        raise subject.corrupt(what, "whose dynamic disk header is missing")
    if vhd_checksum(block, _DYNAMIC_CHECKSUM_AT) != struct.unpack_from(">I", block, 36)[0]:
        raise subject.corrupt(what, "whose dynamic disk header checksum is wrong")
    (_c, _d, table_offset, _v, entries, block_size, _sum, _uuid, _ts, _r, parent_name) = (
        _DYNAMIC.unpack_from(block)
    )
    if footer.disk_type == DIFFERENCING:
        name = parent_name.decode("utf-16-be", "replace").split("\0", 1)[0]
        raise subject.outside(
            "a VHD (differencing)", f"with a parent disk ({quoted(name)})", subject.flatten()
        )
    if block_size < 512 or block_size & (block_size - 1):
        raise subject.corrupt(what, f"with an impossible block size ({block_size})")
    if not src.holds(table_offset, entries * 4):
        raise subject.corrupt(what, "whose block allocation table lies past the end of the file")
    if entries * block_size < size:
        raise subject.corrupt(what, "whose block allocation table is too small for its size")
