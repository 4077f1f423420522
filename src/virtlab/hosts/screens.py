"""A libvirt screenshot as the PNG the node API serves: libvirt 9 with QEMU 7.1+ sends PNG
already; older pairs send a binary PPM, converted here."""

from __future__ import annotations

import re
import struct
import zlib

from virtlab.errors import ToolFailure

__all__ = ["as_png", "ppm_to_png"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_HEADER = re.compile(rb"P6\s+(?:#[^\n]*\s+)*(\d+)\s+(\d+)\s+(\d+)\s")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def as_png(image: bytes) -> bytes:
    """``image`` (PNG or PPM, as the host sent it) as PNG."""
    return image if image.startswith(PNG_SIGNATURE) else ppm_to_png(image)


def ppm_to_png(ppm: bytes) -> bytes:
    """A binary (P6, 8-bit) PPM as an RGB PNG; :class:`ToolFailure` if it is not one."""
    found = _HEADER.match(ppm)
    if found is None or int(found[3]) != 255:
        raise ToolFailure(f"the host sent a screenshot that is not an 8-bit PPM: {ppm[:16]!r}")
    width, height = int(found[1]), int(found[2])
    pixels = ppm[found.end() :]
    stride = width * 3
    if len(pixels) < stride * height:
        raise ToolFailure(f"the host's {width}x{height} screenshot is cut short")
    rows = b"".join(b"\0" + pixels[y * stride : (y + 1) * stride] for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(rows, 6))
        + _chunk(b"IEND", b"")
    )
