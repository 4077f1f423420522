"""Optical media (ISO 9660, UDF) and raw disks (plain, MBR, GPT).

* ISO 9660 (ECMA-119): from byte 32768 a set of 2048-byte volume descriptors (type byte, ``CD001``,
  version 1), one of them the primary (type 1), ended by a terminator (type 255).
* UDF (ECMA-167 / OSTA UDF): a volume recognition sequence from byte 32768 (``BEA01``, then
  ``NSR02`` or ``NSR03``, then ``TEA01``) and an anchor volume descriptor pointer (tag 2) at
  sector 256 of the medium.
* MBR: the 0x55AA signature at 510 and four 16-byte partition entries at 446.
* GPT (UEFI 2.10 ch. 5): ``EFI PART`` at LBA 1 (512 bytes, or 4096 on 4 KiB-sector disks).

The first 32 KiB of an ISO ("system area") belong to whoever boots it: a hybrid ISO keeps an MBR
and a GPT there, which is legitimate. Raw content is the guest's business: it is never refused.
"""

from __future__ import annotations

import struct

from virtlab.images.formats import ImageFormat

from .result import Inspection
from .source import ImageSource
from .verdict import Subject

__all__ = [
    "SYSTEM_AREA",
    "has_gpt",
    "inspect_iso",
    "inspect_raw",
    "iso_variant",
    "plausible_mbr",
]

SYSTEM_AREA = 32 * 1024
VRS_SPAN = 64 * 1024  # descriptors scanned from 32 KiB (2048-byte steps, any UDF block size)
ISO_IDS = (b"CD001",)
UDF_START, UDF_NSR, UDF_END = b"BEA01", (b"NSR02", b"NSR03"), b"TEA01"
VRS_IDS = (*ISO_IDS, UDF_START, *UDF_NSR, UDF_END, b"BOOT2", b"CDW02")
PVD, TERMINATOR = 1, 255
UDF_BLOCK_SIZES = (512, 1024, 2048, 4096)
GPT_SIGNATURE = b"EFI PART"


def _vrs(src: ImageSource) -> list[bytes]:
    """The volume recognition identifiers from 32 KiB on, in order."""
    area = src.read(SYSTEM_AREA, VRS_SPAN)
    found = []
    for at in range(0, len(area) - 2047, 2048):
        ident = area[at + 1 : at + 6]
        if ident in VRS_IDS:
            found.append(ident)
    return found


def iso_variant(src: ImageSource) -> str | None:
    """``iso9660``, ``udf`` or None: what the descriptors at 32 KiB say this medium is."""
    first = src.read(SYSTEM_AREA, 7)
    if first[1:6] == b"CD001" and first[6] == 1:
        return "iso9660"
    ids = _vrs(src) if first[1:6] in VRS_IDS else []
    if UDF_START in ids and any(i in ids for i in UDF_NSR):
        return "udf"
    return None


def inspect_iso(src: ImageSource, subject: Subject) -> Inspection:
    variant = iso_variant(src)
    if variant == "iso9660":
        _check_iso9660(src, subject)
    elif variant == "udf":
        _check_udf(src, subject)
    else:  # pragma: no cover - dispatch only sends media that iso_variant() named
        raise subject.corrupt("an ISO", "without volume descriptors")
    features = ("hybrid",) if plausible_mbr(src.read(0, 512)) or has_gpt(src) else ()
    return Inspection(
        format=ImageFormat.ISO, variant=variant, virtual_size=src.size, features=features
    )


def _check_iso9660(src: ImageSource, subject: Subject) -> None:
    what = "an ISO (iso9660)"
    for index in range(64):  # descriptors: 128 KiB at most before the terminator
        sector = src.read_exact(SYSTEM_AREA + index * 2048, 2048)
        if sector is None or sector[1:6] != b"CD001":
            break
        if sector[0] == TERMINATOR:
            break
        if sector[0] != PVD:
            continue
        blocks_le, blocks_be = struct.unpack_from("<I", sector, 80)[0], sector[84:88]
        size_le, size_be = struct.unpack_from("<H", sector, 128)[0], sector[130:132]
        if blocks_be != struct.pack(">I", blocks_le) or size_be != struct.pack(">H", size_le):
            raise subject.corrupt(what, "whose primary volume descriptor is damaged")
        if size_le not in (512, 1024, 2048):
            raise subject.corrupt(what, f"with an impossible block size ({size_le})")
        if blocks_le * size_le > src.size:
            raise subject.corrupt(what, "that is shorter than its volume (it was cut short)")
        return
    raise subject.corrupt(what, "without a primary volume descriptor")


def _check_udf(src: ImageSource, subject: Subject) -> None:
    """An anchor volume descriptor pointer (tag 2) must sit at sector 256 or the last sector."""
    for block in UDF_BLOCK_SIZES:
        for sector in (256, src.size // block - 1):
            tag = src.read_exact(sector * block, 16)
            if tag is not None and _udf_tag_ok(tag, 2, sector):
                return
    raise subject.corrupt("an ISO (udf)", "without an anchor volume descriptor")


def _udf_tag_ok(tag: bytes, ident: int, location: int) -> bool:
    """ECMA-167 3/7.2: identifier, checksum of bytes 0-3 and 5-15, and the tag's own location."""
    checksum = (sum(tag[:4]) + sum(tag[5:16])) & 0xFF
    return (
        struct.unpack_from("<H", tag)[0] == ident
        and tag[4] == checksum
        and struct.unpack_from("<I", tag, 12)[0] == location
    )


def plausible_mbr(sector0: bytes) -> bool:
    """A boot signature with a partition table that could be real (FAT boot sectors are not)."""
    if len(sector0) < 512 or sector0[510:512] != b"\x55\xaa":
        return False
    used = 0
    for i in range(4):
        entry = sector0[446 + 16 * i : 462 + 16 * i]
        if entry[0] not in (0x00, 0x80):
            return False
        if entry[4] == 0:
            continue
        if struct.unpack_from("<I", entry, 12)[0] == 0:
            return False
        used += 1
    return used > 0


def has_gpt(src: ImageSource) -> bool:
    return any(src.read(lba, 8) == GPT_SIGNATURE for lba in (512, 4096))


def inspect_raw(src: ImageSource, subject: Subject) -> Inspection:
    if has_gpt(src):
        variant = "gpt"
    elif plausible_mbr(src.read(0, 512)):
        variant = "mbr"
    else:
        variant = "plain"
    return Inspection(format=ImageFormat.RAW, variant=variant, virtual_size=src.size)
