"""qcow2 images: every accepted variant, and the hostile or broken ones."""

from __future__ import annotations

import struct
from pathlib import Path

from support.formats._plumbing import (
    DISK_SIZE,
    SECRET,
    _converted,
    _created,
    _patch,
    _qemu_img,
    _read,
    _target,
)
from support.formats.media import make_iso9660, make_pattern_raw
from support.formats.microsoft import make_vhd_fixed


def make_qcow2_v2(directory: Path, name: str | None = None) -> Path:
    """qcow2 version 2 (compat=0.10)."""
    return _converted(directory, name, "v2.qcow2", "qcow2", "-o", "compat=0.10")


def make_qcow2_v3(directory: Path, name: str | None = None) -> Path:
    """qcow2 version 3 (qemu-img's default)."""
    return _converted(directory, name, "v3.qcow2", "qcow2")


def make_qcow2_compressed(directory: Path, name: str | None = None) -> Path:
    """qcow2 with compressed clusters (convert -c)."""
    return _converted(directory, name, "compressed.qcow2", "qcow2", "-c")


def make_qcow2_zstd(directory: Path, name: str | None = None) -> Path:
    """qcow2 compressed with zstd (incompatible feature bit 3)."""
    return _converted(directory, name, "zstd.qcow2", "qcow2", "-c", "-o", "compression_type=zstd")


def make_qcow2_extended_l2(directory: Path, name: str | None = None) -> Path:
    """qcow2 with extended L2 entries (incompatible feature bit 4, which oslo.utils refuses)."""
    return _converted(directory, name, "extl2.qcow2", "qcow2", "-o", "extended_l2=on")


def make_qcow2_snapshot(directory: Path, name: str | None = None) -> Path:
    """qcow2 with an internal snapshot."""
    out = make_qcow2_v3(directory, name or "snapshot.qcow2")
    _qemu_img(directory, "snapshot", "-c", "before", out.name)
    return out


def make_qcow2_bitmap(directory: Path, name: str | None = None) -> Path:
    """qcow2 with a persistent dirty bitmap (bitmaps extension, autoclear bit 0)."""
    out = make_qcow2_v3(directory, name or "bitmap.qcow2")
    _qemu_img(directory, "bitmap", "--add", out.name, "bm0")
    return out


def _or_incompatible(path: Path, bits: int) -> Path:
    (value,) = struct.unpack(">Q", _read(path, 72, 8))
    return _patch(path, 72, struct.pack(">Q", value | bits))


def make_qcow2_dirty(directory: Path, name: str | None = None) -> Path:
    """qcow2 v3 with the dirty bit (incompatible bit 0) set: accepted, feature "dirty"."""
    return _or_incompatible(make_qcow2_v3(directory, name or "dirty.qcow2"), 1 << 0)


def make_qcow2_backing(directory: Path, name: str | None = None) -> Path:
    """qcow2 with a backing file ``base.img`` (the base is made next to it)."""
    out = _target(directory, name, "overlay.qcow2")
    make_pattern_raw(directory, "base.img")
    _qemu_img(directory, "create", "-q", "-f", "qcow2", "-b", "base.img", "-F", "raw", out.name)
    return out


def make_qcow2_backing_json(directory: Path, name: str | None = None) -> Path:
    """qcow2 whose backing file is given with the ``json:`` pseudo-protocol."""
    out = _created(directory, name, "json-backing.qcow2", "qcow2", str(DISK_SIZE))
    spec = '{"driver":"raw","file":{"driver":"file","filename":"/etc/hostname"}}'
    _qemu_img(directory, "rebase", "-u", "-b", f"json:{spec}", "-F", "raw", out.name)
    return out


def make_qcow2_data_file(directory: Path, name: str | None = None) -> Path:
    """qcow2 with an external data file (incompatible bit 2 and the data file extension)."""
    out = _target(directory, name, "datafile.qcow2")
    _qemu_img(
        directory,
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        f"data_file={out.stem}.data",
        out.name,
        str(DISK_SIZE),
    )
    return out


def _encrypted(directory: Path, name: str | None, default: str, fmt: str, *opts: str) -> Path:
    out = _target(directory, name, default)
    _qemu_img(
        directory,
        "create",
        "-q",
        "--object",
        f"secret,id=sec0,data={SECRET}",
        "-f",
        fmt,
        "-o",
        ",".join(opts),
        out.name,
        str(DISK_SIZE),
    )
    return out


def make_qcow2_luks(directory: Path, name: str | None = None) -> Path:
    """qcow2 encrypted with LUKS (crypt_method 2)."""
    return _encrypted(
        directory,
        name,
        "luks.qcow2",
        "qcow2",
        "encrypt.format=luks",
        "encrypt.key-secret=sec0",
        "encrypt.iter-time=100",
    )


def make_qcow2_aes(directory: Path, name: str | None = None) -> Path:
    """qcow2 encrypted with the legacy AES method (crypt_method 1)."""
    return _encrypted(
        directory, name, "aes.qcow2", "qcow2", "encrypt.format=aes", "encrypt.key-secret=sec0"
    )


def make_luks(directory: Path, name: str | None = None) -> Path:
    """A bare LUKS (version 1) container."""
    return _encrypted(directory, name, "disk.luks", "luks", "key-secret=sec0", "iter-time=100")


def make_qcow2_corrupt(directory: Path, name: str | None = None) -> Path:
    """qcow2 v3 marked corrupt (incompatible bit 1)."""
    return _or_incompatible(make_qcow2_v3(directory, name or "corrupt.qcow2"), 1 << 1)


def make_qcow2_unknown_feature(directory: Path, name: str | None = None) -> Path:
    """qcow2 v3 with an incompatible feature bit nobody knows (bit 5)."""
    return _or_incompatible(make_qcow2_v3(directory, name or "unknown.qcow2"), 1 << 5)


def make_qcow2_version4(directory: Path, name: str | None = None) -> Path:
    """A qcow2 header claiming version 4."""
    return _patch(make_qcow2_v3(directory, name or "v4.qcow2"), 4, struct.pack(">I", 4))


def make_qcow1(directory: Path, name: str | None = None) -> Path:
    """The obsolete qcow (version 1) format."""
    return _converted(directory, name, "old.qcow", "qcow")


def make_qed(directory: Path, name: str | None = None) -> Path:
    """QED (QEMU Enhanced Disk)."""
    return _converted(directory, name, "disk.qed", "qed")


def make_qcow2_too_large(directory: Path, name: str | None = None) -> Path:
    """An empty qcow2 claiming 3 TiB (over CAP), made instantly."""
    return _created(directory, name, "huge.qcow2", "qcow2", "3T")


def make_qcow2_zero_size(directory: Path, name: str | None = None) -> Path:
    """A qcow2 of virtual size zero."""
    return _created(directory, name, "empty-disk.qcow2", "qcow2", "0")


def make_qcow2_absurd_size(directory: Path, name: str | None = None) -> Path:
    """A qcow2 header claiming 2^63 bytes."""
    return _patch(make_qcow2_v3(directory, name or "absurd.qcow2"), 24, struct.pack(">Q", 1 << 63))


def make_qcow2_truncated_header(directory: Path, name: str | None = None) -> Path:
    """The first 48 bytes of a qcow2: its header cut short."""
    out = _target(directory, name, "truncated.qcow2")
    whole = make_qcow2_v3(directory, f".{out.name}.whole")
    out.write_bytes(_read(whole, 0, 48))
    whole.unlink()
    return out


def make_qcow2_l1_past_end(directory: Path, name: str | None = None) -> Path:
    """An empty qcow2 cut before its L1 table (qemu-img puts it last)."""
    out = _created(directory, name, "no-l1.qcow2", "qcow2", str(DISK_SIZE))
    (l1_offset,) = struct.unpack(">Q", _read(out, 40, 8))
    with out.open("r+b") as f:
        f.truncate(l1_offset)
    return out


def make_qcow2_bad_cluster_bits(directory: Path, name: str | None = None) -> Path:
    """A qcow2 header claiming 1 GiB clusters (cluster_bits 30)."""
    return _patch(make_qcow2_v3(directory, name or "clusters.qcow2"), 20, struct.pack(">I", 30))


def make_qcow2_extension_overrun(directory: Path, name: str | None = None) -> Path:
    """qcow2 v3 whose first header extension claims to be longer than its cluster."""
    out = make_qcow2_v3(directory, name or "extension.qcow2")
    (header_length,) = struct.unpack(">I", _read(out, 100, 4))
    return _patch(out, header_length + 4, struct.pack(">I", 0x00FFFFF0))


def _mbr_entry(boot: int, ptype: int, start: int, count: int) -> bytes:
    return struct.pack("<B3sB3sII", boot, b"\0\x02\0", ptype, b"\xfe\xff\xff", start, count)


def make_qcow2_with_mbr(directory: Path, name: str | None = None) -> Path:
    """qcow2 v2 carrying an MBR: a partition entry and the 0x55AA boot signature."""
    out = make_qcow2_v2(directory, name or "mbr.qcow2")
    _patch(out, 446, _mbr_entry(0x80, 0x83, 2048, 4096))
    return _patch(out, 510, b"\x55\xaa")


def make_qcow2_boot_signature(directory: Path, name: str | None = None) -> Path:
    """qcow2 v2 with a bare 0x55AA at 510 (no partition entries).

    Our own survey does not call this an MBR (no plausible partition), but oslo.utils sees a
    "gpt" in it too: the refusal comes from the second opinion.
    """
    return _patch(make_qcow2_v2(directory, name or "bootsig.qcow2"), 510, b"\x55\xaa")


def make_qcow2_in_iso(directory: Path, name: str | None = None) -> Path:
    """An ISO 9660 medium whose system area starts with a qcow2 header."""
    out = make_iso9660(directory, name or "qcow2-inside.iso")
    qcow = make_qcow2_v3(directory, f".{out.name}.qcow2")
    _patch(out, 0, _read(qcow, 0, 4096))
    qcow.unlink()
    return out


def make_qcow2_with_vhd_footer(directory: Path, name: str | None = None) -> Path:
    """qcow2 v3 with a fixed VHD's footer appended: two formats, at both ends."""
    out = make_qcow2_v3(directory, name or "footer.qcow2")
    vhd = make_vhd_fixed(directory, f".{out.name}.vhd")
    with out.open("ab") as f:
        f.write(_read(vhd, vhd.stat().st_size - 512, 512))
    vhd.unlink()
    return out
