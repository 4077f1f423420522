"""Microsoft VHDX: dynamic and fixed accepted; differencing and unreplayed logs refused.

Layout from Microsoft's [MS-VHDX] specification v20160714 (little-endian, GUIDs in Microsoft's
mixed-endian form); checks follow qemu's ``block/vhdx.c`` (qemu 7.2):

* 0 KiB: file type identifier ``vhdxfile``;
* 64 KiB and 128 KiB: two 4 KiB headers, CRC-32C, the one with the higher sequence number wins;
* 192 KiB and 256 KiB: two 64 KiB region tables, CRC-32C, locating the BAT and metadata regions;
* the metadata region: a table of items (file parameters, virtual disk size, sector sizes...).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from functools import cache

from virtlab.images.formats import ImageFormat

from .result import Inspection
from .source import ImageSource
from .verdict import Subject

__all__ = ["VHDX_SIGNATURE", "crc32c", "inspect_vhdx"]

VHDX_SIGNATURE = b"vhdxfile"
KiB, MiB = 1024, 1024 * 1024
HEADER_OFFSETS = (64 * KiB, 128 * KiB)
REGION_TABLE_OFFSETS = (192 * KiB, 256 * KiB)
# Header: signature, checksum, sequence number, file write GUID, data write GUID, log GUID,
# log version, version, log length, log offset.
_HEADER = struct.Struct("<4sIQ16s16s16sHHIQ")
_REGION = struct.Struct("<16sQII")  # GUID, file offset, length, required
_ITEM = struct.Struct("<16sIII")  # GUID, offset (from the region start), length, flags

BAT_REGION = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_REGION = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
PAGE83 = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR = uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
KNOWN_ITEMS = {FILE_PARAMETERS, VIRTUAL_DISK_SIZE, PAGE83, LOGICAL_SECTOR, PHYSICAL_SECTOR}
ITEM_REQUIRED = 1 << 2
PARAM_LEAVE_ALLOCATED, PARAM_HAS_PARENT = 1 << 0, 1 << 1
MAX_DISK = 64 * 1024**4  # the format's limit: 64 TiB
WHAT = "a VHDX"


@cache
def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as VHDX checksums use it."""
    table = _crc32c_table()
    crc = 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _checksum_ok(block: bytes) -> bool:
    """Bytes 4..7 hold the CRC-32C of the block with those bytes zeroed."""
    stored = struct.unpack_from("<I", block, 4)[0]
    return crc32c(block[:4] + b"\0\0\0\0" + block[8:]) == stored


@dataclass(frozen=True)
class _Item:
    offset: int
    length: int


def inspect_vhdx(src: ImageSource, subject: Subject) -> Inspection:
    header = _current_header(src, subject)
    regions = _region_table(src, subject)
    meta_offset, meta_length = regions[METADATA_REGION]
    items = _metadata_items(src, subject, meta_offset, meta_length)
    params = src.read(meta_offset + items[FILE_PARAMETERS].offset, 8)
    block_size, flags = struct.unpack("<II", params)
    if flags & PARAM_HAS_PARENT or PARENT_LOCATOR in items:
        raise subject.outside("a VHDX (differencing)", "with a parent disk", subject.flatten())
    variant = "fixed" if flags & PARAM_LEAVE_ALLOCATED else "dynamic"
    what = f"a VHDX ({variant})"
    if header["log_guid"] != bytes(16):
        raise subject.unsupported(
            what,
            "with a log that was never replayed (it was not closed cleanly)",
            f"open it once in Hyper-V, or run qemu-img check -r all {subject.arg}, and upload it "
            "again",
        )
    size = struct.unpack("<Q", src.read(meta_offset + items[VIRTUAL_DISK_SIZE].offset, 8))[0]
    sector = struct.unpack("<I", src.read(meta_offset + items[LOGICAL_SECTOR].offset, 4))[0]
    if sector not in (512, 4096):
        raise subject.corrupt(what, f"with an impossible logical sector size ({sector})")
    if not MiB <= block_size <= 256 * MiB or block_size & (block_size - 1):
        raise subject.corrupt(what, f"with an impossible block size ({block_size})")
    if size > MAX_DISK:
        raise subject.corrupt(what, "larger than the format allows (64 TiB)")
    _check_bat(subject, what, regions[BAT_REGION][1], size, block_size, sector)
    return Inspection(format=ImageFormat.VHDX, variant=variant, virtual_size=size)


def _current_header(src: ImageSource, subject: Subject) -> dict[str, object]:
    best: dict[str, object] | None = None
    for offset in HEADER_OFFSETS:
        block = src.read_exact(offset, 4 * KiB)
        if block is None or block[:4] != b"head" or not _checksum_ok(block):
            continue
        fields = _HEADER.unpack_from(block)
        header = {"sequence": fields[2], "log_guid": fields[5], "version": fields[7]}
        if best is None or fields[2] > best["sequence"]:  # type: ignore[operator]
            best = header
    if best is None:
        raise subject.corrupt(WHAT, "missing its headers (neither copy is intact)")
    if best["version"] != 1:
        raise subject.unsupported(f"a VHDX (version {best['version']})", "of an unknown version")
    return best


def _region_table(src: ImageSource, subject: Subject) -> dict[uuid.UUID, tuple[int, int]]:
    for offset in REGION_TABLE_OFFSETS:
        block = src.read_exact(offset, 64 * KiB)
        if block is None or block[:4] != b"regi" or not _checksum_ok(block):
            continue
        count = struct.unpack_from("<I", block, 8)[0]
        if count > 2047:
            continue
        regions = {}
        for i in range(count):
            guid, file_offset, length, required = _REGION.unpack_from(block, 16 + 32 * i)
            key = uuid.UUID(bytes_le=guid)
            if key not in (BAT_REGION, METADATA_REGION):
                if required & 1:
                    raise subject.unsupported(
                        WHAT, f"with a required region virtlab does not know ({key})"
                    )
                continue
            if file_offset < MiB or file_offset % MiB or not src.holds(file_offset, length):
                raise subject.corrupt(WHAT, "whose region table points past the end of the file")
            regions[key] = (file_offset, length)
        if BAT_REGION not in regions or METADATA_REGION not in regions:
            raise subject.corrupt(WHAT, "whose region table lacks its BAT or metadata region")
        return regions
    raise subject.corrupt(WHAT, "missing its region tables (neither copy is intact)")


def _metadata_items(
    src: ImageSource, subject: Subject, region: int, length: int
) -> dict[uuid.UUID, _Item]:
    table = src.read(region, 64 * KiB)
    if table[:8] != b"metadata":
        raise subject.corrupt(WHAT, "whose metadata region is missing")
    count = struct.unpack_from("<H", table, 10)[0]
    if count > 2047:
        raise subject.corrupt(WHAT, "with an impossible metadata item count")
    items = {}
    for i in range(count):
        guid, offset, size, flags = _ITEM.unpack_from(table, 32 + 32 * i)
        key = uuid.UUID(bytes_le=guid)
        if key not in KNOWN_ITEMS and key != PARENT_LOCATOR:
            if flags & ITEM_REQUIRED:
                raise subject.unsupported(
                    WHAT, f"with a required metadata item virtlab does not know ({key})"
                )
            continue
        if offset < 64 * KiB or offset + size > length:
            raise subject.corrupt(WHAT, "whose metadata items lie outside the metadata region")
        items[key] = _Item(offset, size)
    missing = {FILE_PARAMETERS, VIRTUAL_DISK_SIZE, LOGICAL_SECTOR} - items.keys()
    if missing:
        raise subject.corrupt(WHAT, "whose metadata lacks its size or parameters")
    return items


def _check_bat(
    subject: Subject, what: str, bat_length: int, size: int, block_size: int, sector: int
) -> None:
    """The BAT must hold an entry per data block plus one per chunk of sector bitmaps."""
    chunk_ratio = (1 << 23) * sector // block_size
    data_blocks = -(-size // block_size)
    entries = data_blocks + (data_blocks - 1) // chunk_ratio if data_blocks else 0
    if entries * 8 > bat_length:
        raise subject.corrupt(what, "whose block allocation table is too small for its size")
