"""VirtualBox VDI and Microsoft VHD / VHDX images, good and bad."""

from __future__ import annotations

import struct
from pathlib import Path

from support.formats._plumbing import DISK_SIZE, _converted, _patch, _qemu_img, _read, _target
from support.formats.media import make_raw_mbr


def make_vdi_dynamic(directory: Path, name: str | None = None) -> Path:
    """VDI, dynamically allocated."""
    return _converted(directory, name, "dynamic.vdi", "vdi")


def make_vdi_fixed(directory: Path, name: str | None = None) -> Path:
    """VDI, fixed size (qemu's static=on)."""
    return _converted(directory, name, "fixed.vdi", "vdi", "-o", "static=on")


def make_vdi_bad_header_size(directory: Path, name: str | None = None) -> Path:
    """VDI whose header_size field is wrong."""
    return _patch(make_vdi_dynamic(directory, name or "bad.vdi"), 0x48, struct.pack("<I", 0x100))


def make_vdi_differencing(directory: Path, name: str | None = None) -> Path:
    """VDI of image type 4 (differencing) with a parent UUID."""
    out = _patch(make_vdi_dynamic(directory, name or "diff.vdi"), 0x4C, struct.pack("<I", 4))
    return _patch(out, 0x1B8, b"\x11" * 16)


def make_vdi_truncated(directory: Path, name: str | None = None) -> Path:
    """A fixed VDI cut to half its blocks."""
    out = make_vdi_fixed(directory, name or "short.vdi")
    with out.open("r+b") as f:
        f.truncate(DISK_SIZE // 2)
    return out


def make_vhdx_dynamic(directory: Path, name: str | None = None) -> Path:
    """VHDX, dynamic."""
    return _converted(directory, name, "dynamic.vhdx", "vhdx")


def make_vhdx_fixed(directory: Path, name: str | None = None) -> Path:
    """VHDX, fixed."""
    return _converted(directory, name, "fixed.vhdx", "vhdx", "-o", "subformat=fixed")


def make_vhdx_no_headers(directory: Path, name: str | None = None) -> Path:
    """VHDX with both headers (64 KiB and 128 KiB) wiped."""
    return _patch(
        make_vhdx_dynamic(directory, name or "headless.vhdx"), 64 * 1024, bytes(128 * 1024)
    )


def make_vhd_dynamic(directory: Path, name: str | None = None) -> Path:
    """VHD (qemu's vpc), dynamic: footer copies at both ends."""
    return _converted(directory, name, "dynamic.vhd", "vpc", "-o", "subformat=dynamic")


def make_vhd_fixed(directory: Path, name: str | None = None) -> Path:
    """VHD, fixed: raw data then the footer, at the end only."""
    return _converted(directory, name, "fixed.vhd", "vpc", "-o", "subformat=fixed")


def make_vhd_fixed_partitioned(directory: Path, name: str | None = None) -> Path:
    """A fixed VHD of a partitioned disk: an MBR at its start, the VHD footer at its end."""
    out = _target(directory, name, "partitioned.vhd")
    source = make_raw_mbr(directory, f".{out.name}.source.raw")
    _qemu_img(
        directory,
        "convert",
        "-f",
        "raw",
        "-O",
        "vpc",
        "-o",
        "subformat=fixed",
        source.name,
        out.name,
    )
    source.unlink()
    return out


def _vhd_checksum(block: bytes, at: int) -> bytes:
    total = sum(block) - sum(block[at : at + 4])
    return struct.pack(">I", ~total & 0xFFFFFFFF)


def make_vhd_bad_checksum(directory: Path, name: str | None = None) -> Path:
    """A dynamic VHD whose first footer copy had a byte changed after its checksum."""
    out = make_vhd_dynamic(directory, name or "bad-sum.vhd")
    return _patch(out, 40, bytes([_read(out, 40, 1)[0] ^ 0x01]))


def make_vhd_differencing(directory: Path, name: str | None = None) -> Path:
    """A VHD made differencing (disk type 4) with parent ``base.vhd``, checksums fixed."""
    out = make_vhd_dynamic(directory, name or "diff.vhd")
    footer = bytearray(_read(out, 0, 512))
    footer[60:64] = struct.pack(">I", 4)
    footer[64:68] = _vhd_checksum(bytes(footer), 64)
    size = out.stat().st_size
    _patch(out, 0, bytes(footer))
    _patch(out, size - 512, bytes(footer))
    (data_offset,) = struct.unpack(">Q", footer[16:24])
    dynamic = bytearray(_read(out, data_offset, 1024))
    dynamic[64 : 64 + 16] = "base.vhd".encode("utf-16-be")
    dynamic[36:40] = _vhd_checksum(bytes(dynamic), 36)
    return _patch(out, data_offset, bytes(dynamic))
