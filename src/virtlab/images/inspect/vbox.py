"""VirtualBox VDI: dynamic and fixed (static) accepted; differencing and undo images refused.

Layout of the v1.1 header from VirtualBox ``VDICore.h`` as qemu's ``block/vdi.c`` (qemu 7.2)
reads it: a 64-byte text banner, then little-endian fields from offset 0x40.
"""

from __future__ import annotations

import struct

from virtlab.images.formats import ImageFormat

from .result import Inspection
from .source import ImageSource
from .verdict import Subject

__all__ = ["VDI_SIGNATURE", "inspect_vdi", "is_vdi"]

VDI_SIGNATURE = 0xBEDA107F
VDI_VERSION_1_1 = 0x00010001
HEADER_SIZES = (0x180, 0x190)  # qemu writes 0x180, VirtualBox sizeof(VDIHEADER1PLUS)
BLOCK_SIZE = 1024 * 1024  # the only block size qemu supports
BLOCKS_MAX = 0xFFFFFFFF // 4  # qemu VDI_BLOCKS_IN_IMAGE_MAX
DYNAMIC, STATIC, UNDO, DIFF = 1, 2, 3, 4
# From 0x40: signature, version, header_size, image_type, image_flags, description[256],
# offset_bmap, offset_data, cylinders, heads, sectors, sector_size, unused, disk_size,
# block_size, block_extra, blocks_in_image, blocks_allocated, uuid_image, uuid_last_snap,
# uuid_link, uuid_parent.
_HEADER = struct.Struct("<IIIII256sIIIIIIIQIIII16s16s16s16s")


def is_vdi(head: bytes) -> bool:
    return len(head) >= 0x44 and struct.unpack_from("<I", head, 0x40)[0] == VDI_SIGNATURE


def inspect_vdi(src: ImageSource, subject: Subject) -> Inspection:
    block = src.read_exact(0, 0x40 + _HEADER.size)
    if block is None:
        raise subject.corrupt("a VDI", "whose header is cut short")
    (
        _sig,
        version,
        header_size,
        image_type,
        _flags,
        _desc,
        offset_bmap,
        offset_data,
        _c,
        _h,
        _s,
        sector_size,
        _u,
        disk_size,
        block_size,
        block_extra,
        blocks,
        allocated,
        _uuid,
        _snap,
        uuid_link,
        uuid_parent,
    ) = _HEADER.unpack_from(block, 0x40)
    if version != VDI_VERSION_1_1:
        raise subject.unsupported(
            f"a VDI (version {version >> 16}.{version & 0xFFFF})", "of a version qemu cannot read"
        )
    if image_type == DIFF or uuid_parent != bytes(16) or uuid_link != bytes(16):
        raise subject.outside("a VDI (differencing)", "with a parent disk", subject.flatten())
    if image_type not in (DYNAMIC, STATIC):
        kind = "undo" if image_type == UNDO else f"type {image_type}"
        raise subject.unsupported(f"a VDI ({kind})", "of a kind virtlab does not accept")
    variant = "dynamic" if image_type == DYNAMIC else "fixed"
    what = f"a VDI ({variant})"
    if header_size not in HEADER_SIZES or sector_size != 512:
        raise subject.corrupt(what, "whose header sizes are wrong")
    if block_size != BLOCK_SIZE or block_extra:
        raise subject.unsupported(what, f"with a block size qemu cannot read ({block_size})")
    if blocks > BLOCKS_MAX or allocated > blocks or disk_size > blocks * block_size:
        raise subject.corrupt(what, "whose block counts disagree with its size")
    if offset_bmap % 512 or offset_data % 512 or offset_bmap < 0x200:
        raise subject.corrupt(what, "whose block map or data are misplaced")
    if offset_bmap + blocks * 4 > offset_data:
        raise subject.corrupt(what, "whose block map overlaps its data")
    used = blocks if image_type == STATIC else allocated
    if not src.holds(offset_data, used * block_size):
        raise subject.corrupt(what, "that holds fewer blocks than its header counts")
    return Inspection(format=ImageFormat.VDI, variant=variant, virtual_size=disk_size)
