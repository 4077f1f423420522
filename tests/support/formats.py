"""Test disk images: one maker per format virtlab accepts and per kind of image it refuses.

Every ``make_*`` function writes one image into ``directory`` and returns its path; pass ``name``
to save it under another (say, misleading) file name. Helper files a maker needs (a backing
file, a data file, flat extents) land next to it. Real tools make the real formats (qemu-img 7.2,
xorriso, mkudffs, sfdisk, mkfs.fat); hostile headers are crafted with ``struct`` on top of them.

The disk images hold real data: :func:`make_pattern_raw` writes :data:`PATTERN` at
:data:`PATTERN_OFFSETS` of a :data:`DISK_SIZE` disk, and the qcow2/VMDK/VDI/VHD/VHDX images are
converted from it, so comparing an imported image with ``make_pattern_raw``'s output
(``qemu-img compare``) means something.

Registries, for parametrized tests (and the importer, API and benchmark tests)::

    ACCEPTED: case name -> Accepted(maker, format, variant)
    REFUSED:  case name -> Refused(maker, error, needle)   # needle: a substring of the message

REFUSED expectations assume ``max_virtual_size=CAP``; ACCEPTED images are all far below it.
:func:`make_disguised` makes any case under a name that suggests another format.
"""

from __future__ import annotations

import gzip
import io
import random
import shutil
import struct
import subprocess
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from virtlab.errors import CorruptImage, ImageRejected, TooLarge, UnsafeImage, UnsupportedImage
from virtlab.images.formats import ImageFormat

__all__ = [
    "ACCEPTED",
    "CAP",
    "DISK_SIZE",
    "PATTERN",
    "PATTERN_OFFSETS",
    "REFUSED",
    "Accepted",
    "Maker",
    "Refused",
    "misleading_name",
]

MiB = 1024 * 1024
DISK_SIZE = 4 * MiB  # virtual size of every accepted disk image
CAP = 2 * 1024**4  # the max_virtual_size REFUSED expectations assume (2 TiB)
PATTERN = random.Random(0x5EED).randbytes(64 * 1024)  # incompressible, not text
PATTERN_OFFSETS = (1 * MiB, 3 * MiB - 4096)  # where make_pattern_raw writes PATTERN
SECRET = "virtlab-test-secret"

Maker = Callable[..., Path]  # (directory: Path, name: str | None = None) -> Path


class Accepted(NamedTuple):
    maker: Maker
    format: ImageFormat
    variant: str


class Refused(NamedTuple):
    maker: Maker
    error: type[ImageRejected]
    needle: str


# -- plumbing --


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise RuntimeError(f"{name} is not installed (apt-get install the package providing it)")
    return found


def _run(*argv: str, cwd: Path, stdin: bytes | None = None) -> None:
    try:
        subprocess.run(
            [_tool(argv[0]), *argv[1:]], cwd=cwd, input=stdin, check=True, capture_output=True
        )
    except subprocess.CalledProcessError as exc:
        stderr = exc.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"{' '.join(argv)} failed ({exc.returncode}): {stderr}") from exc


def _qemu_img(directory: Path, *args: str) -> None:
    _run("qemu-img", *args, cwd=directory)


def _patch(path: Path, offset: int, data: bytes) -> Path:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)
    return path


def _read(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


def _target(directory: Path, name: str | None, default: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory / (name or default)


def _converted(directory: Path, name: str | None, default: str, fmt: str, *opts: str) -> Path:
    """``qemu-img convert`` of the pattern disk to ``fmt`` (with ``opts``, e.g. ``-c``)."""
    out = _target(directory, name, default)
    source = make_pattern_raw(directory, f".{out.name}.source.raw")
    _qemu_img(directory, "convert", "-f", "raw", "-O", fmt, *opts, source.name, out.name)
    source.unlink()
    return out


def _created(directory: Path, name: str | None, default: str, fmt: str, *opts: str) -> Path:
    """``qemu-img create`` (empty, instant); ``opts`` end with the size."""
    out = _target(directory, name, default)
    _qemu_img(directory, "create", "-q", "-f", fmt, *opts[:-1], out.name, opts[-1])
    return out


# -- raw and media --


def make_pattern_raw(directory: Path, name: str | None = None, size: int = DISK_SIZE) -> Path:
    """A sparse raw disk of ``size`` with PATTERN at PATTERN_OFFSETS (sector 0 stays zero)."""
    out = _target(directory, name, "pattern.raw")
    with out.open("wb") as f:
        f.truncate(size)
        for offset in PATTERN_OFFSETS:
            f.seek(offset)
            f.write(PATTERN)
    return out


def make_raw_zeros(directory: Path, name: str | None = None) -> Path:
    """A raw disk of zeros (sparse)."""
    out = _target(directory, name, "zeros.img")
    with out.open("wb") as f:
        f.truncate(DISK_SIZE)
    return out


def make_raw_random(directory: Path, name: str | None = None) -> Path:
    """1 MiB of seeded random bytes: raw, whatever they happen to look like."""
    out = _target(directory, name, "random.img")
    out.write_bytes(random.Random(42).randbytes(MiB))
    return out


def make_raw_fat(directory: Path, name: str | None = None) -> Path:
    """An unpartitioned FAT file system (its boot sector has the 0x55AA signature)."""
    out = make_raw_zeros(directory, name or "fat.img")
    _run("mkfs.fat", "-n", "VIRTLAB", out.name, cwd=directory)
    return out


def make_raw_mbr(directory: Path, name: str | None = None) -> Path:
    """The pattern disk with an MBR partition table (sfdisk)."""
    out = make_pattern_raw(directory, name or "mbr.img")
    _run("sfdisk", "-q", out.name, cwd=directory, stdin=b"label: dos\n2048,4096,83\n")
    return out


def make_raw_gpt(directory: Path, name: str | None = None) -> Path:
    """The pattern disk with a GPT (sfdisk; a protective MBR comes with it)."""
    out = make_pattern_raw(directory, name or "gpt.img")
    _run("sfdisk", "-q", out.name, cwd=directory, stdin=b"label: gpt\n2048,2048\n")
    return out


def _iso_tree(directory: Path, label: str) -> Path:
    tree = directory / f".{label}.tree"
    tree.mkdir(parents=True, exist_ok=True)
    (tree / "README.TXT").write_text("virtlab test medium\n")
    (tree / "PATTERN.BIN").write_bytes(PATTERN)
    return tree


def make_iso9660(directory: Path, name: str | None = None) -> Path:
    """An ISO 9660 medium (xorriso -as mkisofs) holding PATTERN.BIN."""
    out = _target(directory, name, "disc.iso")
    tree = _iso_tree(directory, out.name)
    _run(
        "xorriso",
        "-as",
        "mkisofs",
        "-quiet",
        "-V",
        "VIRTLAB",
        "-o",
        out.name,
        tree.name,
        cwd=directory,
    )
    shutil.rmtree(tree)
    return out


def make_iso_hybrid(directory: Path, name: str | None = None) -> Path:
    """A hybrid ISO like Debian's: an MBR and a GPT in the system area, an EFI partition."""
    out = _target(directory, name, "hybrid.iso")
    tree = _iso_tree(directory, out.name)
    efi = make_raw_zeros(directory, f".{out.name}.efi.img")
    with efi.open("r+b") as f:
        f.truncate(MiB)
    _run("mkfs.fat", efi.name, cwd=directory)
    _run(
        "xorriso",
        "-as",
        "mkisofs",
        "-quiet",
        "-V",
        "VIRTLAB",
        "-o",
        out.name,
        "-append_partition",
        "2",
        "0xef",
        efi.name,
        "-appended_part_as_gpt",
        tree.name,
        cwd=directory,
    )
    shutil.rmtree(tree)
    efi.unlink()
    return out


def make_udf(directory: Path, name: str | None = None) -> Path:
    """A UDF medium (mkudffs, 2048-byte blocks) without any ISO 9660 descriptor."""
    out = make_raw_zeros(directory, name or "disc-udf.iso")
    _run(
        "mkudffs",
        "--media-type=dvd",
        "--blocksize=2048",
        "--label=VIRTLAB",
        out.name,
        cwd=directory,
    )
    return out


def make_udf_hd(directory: Path, name: str | None = None) -> Path:
    """A UDF file system as mkudffs makes it for hard disks (512-byte blocks)."""
    out = make_raw_zeros(directory, name or "udf-hd.img")
    _run("mkudffs", "--media-type=hd", out.name, cwd=directory)
    return out


# -- qcow2 --


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


# -- VMDK --


def make_vmdk_sparse(directory: Path, name: str | None = None) -> Path:
    """VMDK monolithicSparse (qemu-img's default subformat)."""
    return _converted(directory, name, "disk.vmdk", "vmdk")


def make_vmdk_stream(directory: Path, name: str | None = None) -> Path:
    """VMDK streamOptimized, as qemu-img writes it (grain directory in the header)."""
    return _converted(directory, name, "stream.vmdk", "vmdk", "-o", "subformat=streamOptimized")


def make_vmdk_stream_footer(directory: Path, name: str | None = None) -> Path:
    """VMDK streamOptimized as VMware writes it: gdOffset at the end, then a footer.

    qemu-img's stream with its header's gdOffset set to GD_AT_END (all ones), followed by a
    footer marker, the original header (the "footer") and an end-of-stream marker.
    """
    out = make_vmdk_stream(directory, name or "stream-footer.vmdk")
    header = _read(out, 0, 512)
    marker = struct.pack("<QII", 0, 0, 3).ljust(512, b"\0")
    with out.open("ab") as f:
        f.write(marker + header + bytes(512))
    return _patch(out, 56, b"\xff" * 8)


def _descriptor(create_type: str, extents: list[str], extra: str = "") -> str:
    lines = "\n".join(extents)
    return (
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n"
        f'{extra}createType="{create_type}"\n\n# Extent description\n{lines}\n\n'
        '# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = "4"\nddb.adapterType = "ide"\n'
    )


def _replace_embedded_descriptor(path: Path, text: str) -> Path:
    desc_sector, desc_sectors = struct.unpack("<QQ", _read(path, 28, 16))
    raw = text.encode()
    assert len(raw) < desc_sectors * 512
    return _patch(path, desc_sector * 512, raw.ljust(desc_sectors * 512, b"\0"))


def make_vmdk_embedded_other_file(directory: Path, name: str | None = None) -> Path:
    """monolithicSparse with capacity 0, whose embedded descriptor names another file.

    qemu opens such a file like a descriptor file: it would read ``other.raw``.
    """
    out = make_vmdk_sparse(directory, name or "pointer.vmdk")
    sectors = DISK_SIZE // 512
    text = _descriptor("monolithicSparse", [f'RW {sectors} FLAT "other.raw" 0'])
    _replace_embedded_descriptor(out, text)
    return _patch(out, 12, struct.pack("<Q", 0))


def make_vmdk_embedded_second_extent(directory: Path, name: str | None = None) -> Path:
    """monolithicSparse whose embedded descriptor lists itself and a second file."""
    out = make_vmdk_sparse(directory, name or "two-extents.vmdk")
    sectors = DISK_SIZE // 512
    text = _descriptor(
        "monolithicSparse",
        [f'RW {sectors} SPARSE "{out.name}"', f'RW {sectors} FLAT "/etc/hostname" 0'],
    )
    return _replace_embedded_descriptor(out, text)


def make_vmdk_parent(directory: Path, name: str | None = None) -> Path:
    """A VMDK child of ``base.vmdk`` (parentFileNameHint in its embedded descriptor)."""
    out = _target(directory, name, "child.vmdk")
    make_vmdk_sparse(directory, "base.vmdk")
    _qemu_img(directory, "create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", out.name)
    return out


def make_vmdk_monolithic_flat(directory: Path, name: str | None = None) -> Path:
    """VMDK monolithicFlat: a text descriptor plus ``<name>-flat.vmdk`` holding the data."""
    out = _target(directory, name, "flat.vmdk")
    made = _created(
        directory,
        f"{out.stem}-desc.vmdk",
        "",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        str(DISK_SIZE),
    )
    return made.rename(out)


def make_vmdk_two_gb_sparse(directory: Path, name: str | None = None) -> Path:
    """VMDK twoGbMaxExtentSparse: a text descriptor plus ``-s001.vmdk`` extents."""
    out = _target(directory, name, "split.vmdk")
    made = _created(
        directory,
        f"{out.stem}-desc.vmdk",
        "",
        "vmdk",
        "-o",
        "subformat=twoGbMaxExtentSparse",
        str(DISK_SIZE),
    )
    return made.rename(out)


def make_vmdk_descriptor_abs_path(directory: Path, name: str | None = None) -> Path:
    """A hand-written descriptor file whose FLAT extent is ``/etc/passwd``."""
    out = _target(directory, name, "passwd.vmdk")
    sectors = DISK_SIZE // 512
    out.write_text(_descriptor("monolithicFlat", [f'RW {sectors} FLAT "/etc/passwd" 0']))
    return out


def make_vmdk_newline_damaged(directory: Path, name: str | None = None) -> Path:
    """monolithicSparse whose newline check bytes were mangled (a text-mode transfer)."""
    return _patch(make_vmdk_sparse(directory, name or "ftp.vmdk"), 73, b"\n \n\n")


def make_vmdk_cowd(directory: Path, name: str | None = None) -> Path:
    """The start of an ESX ``COWD`` sparse extent (VMDK version 3 of old)."""
    out = _target(directory, name, "esx.vmdk")
    out.write_bytes(b"COWD" + struct.pack("<II", 1, 3) + bytes(MiB - 12))
    return out


# -- VirtualBox, Microsoft --


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


# -- everything else --


def make_empty(directory: Path, name: str | None = None) -> Path:
    out = _target(directory, name, "empty.img")
    out.write_bytes(b"")
    return out


def make_zip(directory: Path, name: str | None = None) -> Path:
    out = _target(directory, name, "disk.zip")
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("disk.raw", PATTERN)
    return out


def make_tar(directory: Path, name: str | None = None) -> Path:
    out = _target(directory, name, "disk.tar")
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as archive:
        info = tarfile.TarInfo("disk.raw")
        info.size = len(PATTERN)
        archive.addfile(info, io.BytesIO(PATTERN))
    return out


def make_gzip(directory: Path, name: str | None = None) -> Path:
    """gzip data (compression is unwrapped before inspection: this is a second layer)."""
    out = _target(directory, name, "disk.raw.gz")
    out.write_bytes(gzip.compress(PATTERN, mtime=0))
    return out


def make_elf(directory: Path, name: str | None = None) -> Path:
    out = _target(directory, name, "program")
    shutil.copyfile(_tool("true"), out)
    return out


def make_text(directory: Path, name: str | None = None) -> Path:
    out = _target(directory, name, "notes.txt")
    out.write_text("This is not a disk image.\n" * 200)
    return out


def make_parallels(directory: Path, name: str | None = None) -> Path:
    """A Parallels disk image (qemu-img create -f parallels)."""
    return _created(directory, name, "disk.hdd", "parallels", str(DISK_SIZE))


def make_dmg(directory: Path, name: str | None = None) -> Path:
    """Raw data followed by an Apple UDIF ``koly`` trailer."""
    out = make_pattern_raw(directory, name or "disk.dmg")
    with out.open("ab") as f:
        f.write((b"koly" + struct.pack(">II", 4, 512)).ljust(512, b"\0"))
    return out


def make_bochs(directory: Path, name: str | None = None) -> Path:
    out = _target(directory, name, "disk.bochs")
    header = b"Bochs Virtual HD Image\0".ljust(32, b"\0") + b"Redolog\0".ljust(16, b"\0")
    out.write_bytes(header.ljust(512, b"\0") + bytes(MiB))
    return out


def make_iso_truncated(directory: Path, name: str | None = None) -> Path:
    """An ISO 9660 medium cut to 40 KiB (its descriptors survive, its volume does not)."""
    out = make_iso9660(directory, name or "short.iso")
    with out.open("r+b") as f:
        f.truncate(40 * 1024)
    return out


# -- registries --

Q, V, I = ImageFormat.QCOW2, ImageFormat.VMDK, ImageFormat.ISO  # noqa: E741

ACCEPTED: dict[str, Accepted] = {
    "qcow2_v2": Accepted(make_qcow2_v2, Q, "v2"),
    "qcow2_v3": Accepted(make_qcow2_v3, Q, "v3"),
    "qcow2_compressed": Accepted(make_qcow2_compressed, Q, "v3"),
    "qcow2_zstd": Accepted(make_qcow2_zstd, Q, "v3"),
    "qcow2_extended_l2": Accepted(make_qcow2_extended_l2, Q, "v3"),
    "qcow2_snapshot": Accepted(make_qcow2_snapshot, Q, "v3"),
    "qcow2_bitmap": Accepted(make_qcow2_bitmap, Q, "v3"),
    "qcow2_dirty": Accepted(make_qcow2_dirty, Q, "v3"),
    "vmdk_sparse": Accepted(make_vmdk_sparse, V, "monolithicSparse"),
    "vmdk_stream": Accepted(make_vmdk_stream, V, "streamOptimized"),
    "vmdk_stream_footer": Accepted(make_vmdk_stream_footer, V, "streamOptimized"),
    "vdi_dynamic": Accepted(make_vdi_dynamic, ImageFormat.VDI, "dynamic"),
    "vdi_fixed": Accepted(make_vdi_fixed, ImageFormat.VDI, "fixed"),
    "vhdx_dynamic": Accepted(make_vhdx_dynamic, ImageFormat.VHDX, "dynamic"),
    "vhdx_fixed": Accepted(make_vhdx_fixed, ImageFormat.VHDX, "fixed"),
    "vhd_dynamic": Accepted(make_vhd_dynamic, ImageFormat.VHD, "dynamic"),
    "vhd_fixed": Accepted(make_vhd_fixed, ImageFormat.VHD, "fixed"),
    "vhd_fixed_partitioned": Accepted(make_vhd_fixed_partitioned, ImageFormat.VHD, "fixed"),
    "raw_plain": Accepted(make_pattern_raw, ImageFormat.RAW, "plain"),
    "raw_zeros": Accepted(make_raw_zeros, ImageFormat.RAW, "plain"),
    "raw_random": Accepted(make_raw_random, ImageFormat.RAW, "plain"),
    "raw_fat": Accepted(make_raw_fat, ImageFormat.RAW, "plain"),
    "raw_mbr": Accepted(make_raw_mbr, ImageFormat.RAW, "mbr"),
    "raw_gpt": Accepted(make_raw_gpt, ImageFormat.RAW, "gpt"),
    "iso9660": Accepted(make_iso9660, I, "iso9660"),
    "iso_hybrid": Accepted(make_iso_hybrid, I, "iso9660"),
    "udf": Accepted(make_udf, I, "udf"),
    "udf_hd": Accepted(make_udf_hd, I, "udf"),
}

OUTSIDE = "refusing to read files outside the upload"
SEVERAL = "matches more than one format"
REFUSED: dict[str, Refused] = {
    "qcow2_backing": Refused(make_qcow2_backing, UnsafeImage, "with a backing file ('base.img')"),
    "qcow2_backing_json": Refused(make_qcow2_backing_json, UnsafeImage, "json:"),
    "qcow2_data_file": Refused(make_qcow2_data_file, UnsafeImage, "external data file"),
    "qcow2_luks": Refused(make_qcow2_luks, UnsafeImage, "encrypted with LUKS"),
    "qcow2_aes": Refused(make_qcow2_aes, UnsafeImage, "encrypted with AES"),
    "luks": Refused(make_luks, UnsafeImage, "LUKS container"),
    "qcow2_corrupt": Refused(make_qcow2_corrupt, CorruptImage, "marked corrupt"),
    "qcow2_unknown_feature": Refused(
        make_qcow2_unknown_feature, UnsafeImage, "incompatible features virtlab does not know"
    ),
    "qcow2_version4": Refused(make_qcow2_version4, UnsupportedImage, "(version 4)"),
    "qcow1": Refused(make_qcow1, UnsupportedImage, "qcow image (version 1)"),
    "qed": Refused(make_qed, UnsupportedImage, "QED image"),
    "qcow2_too_large": Refused(
        make_qcow2_too_large, TooLarge, "virtual size of 3.0 TiB, past the limit of 2.0 TiB"
    ),
    "qcow2_zero_size": Refused(make_qcow2_zero_size, CorruptImage, "virtual size of zero"),
    "qcow2_absurd_size": Refused(make_qcow2_absurd_size, CorruptImage, "impossible virtual size"),
    "qcow2_truncated_header": Refused(make_qcow2_truncated_header, CorruptImage, "cut short"),
    "qcow2_l1_past_end": Refused(make_qcow2_l1_past_end, CorruptImage, "L1 table lies past"),
    "qcow2_bad_cluster_bits": Refused(
        make_qcow2_bad_cluster_bits, CorruptImage, "impossible cluster size"
    ),
    "qcow2_extension_overrun": Refused(
        make_qcow2_extension_overrun, CorruptImage, "runs past its first cluster"
    ),
    "qcow2_with_mbr": Refused(make_qcow2_with_mbr, UnsafeImage, f"{SEVERAL} (qcow2 and mbr)"),
    "qcow2_boot_signature": Refused(
        make_qcow2_boot_signature, UnsafeImage, f"{SEVERAL} (gpt and qcow2, says a second"
    ),
    "qcow2_in_iso": Refused(make_qcow2_in_iso, UnsafeImage, f"{SEVERAL} (qcow2 and iso)"),
    "qcow2_with_vhd_footer": Refused(
        make_qcow2_with_vhd_footer, UnsafeImage, f"{SEVERAL} (qcow2 and vhd)"
    ),
    "vmdk_monolithic_flat": Refused(
        make_vmdk_monolithic_flat,
        UnsafeImage,
        f"is a VMDK (monolithicFlat) whose extent is a separate file; {OUTSIDE}",
    ),
    "vmdk_two_gb_sparse": Refused(
        make_vmdk_two_gb_sparse, UnsafeImage, "is a VMDK (twoGbMaxExtentSparse) whose extent"
    ),
    "vmdk_descriptor_abs_path": Refused(
        make_vmdk_descriptor_abs_path, UnsafeImage, "other files are ('/etc/passwd')"
    ),
    "vmdk_embedded_other_file": Refused(
        make_vmdk_embedded_other_file, UnsafeImage, "other files are ('other.raw')"
    ),
    "vmdk_embedded_second_extent": Refused(
        make_vmdk_embedded_second_extent, UnsafeImage, "extents are separate files"
    ),
    "vmdk_parent": Refused(make_vmdk_parent, UnsafeImage, "with a parent disk ('base.vmdk')"),
    "vmdk_newline_damaged": Refused(make_vmdk_newline_damaged, CorruptImage, "newline check"),
    "vmdk_cowd": Refused(make_vmdk_cowd, UnsupportedImage, "COWD"),
    "vdi_bad_header_size": Refused(make_vdi_bad_header_size, CorruptImage, "header sizes"),
    "vdi_differencing": Refused(make_vdi_differencing, UnsafeImage, "a VDI (differencing)"),
    "vdi_truncated": Refused(make_vdi_truncated, CorruptImage, "fewer blocks"),
    "vhdx_no_headers": Refused(make_vhdx_no_headers, CorruptImage, "missing its headers"),
    "vhd_bad_checksum": Refused(make_vhd_bad_checksum, CorruptImage, "footer checksum is wrong"),
    "vhd_differencing": Refused(
        make_vhd_differencing, UnsafeImage, "with a parent disk ('base.vhd')"
    ),
    "iso_truncated": Refused(make_iso_truncated, CorruptImage, "cut short"),
    "empty": Refused(make_empty, UnsupportedImage, "is empty"),
    "zip": Refused(make_zip, UnsupportedImage, "is a ZIP archive"),
    "tar": Refused(make_tar, UnsupportedImage, "is a tar archive"),
    "gzip": Refused(make_gzip, UnsupportedImage, "is gzip-compressed data"),
    "elf": Refused(make_elf, UnsupportedImage, "is an ELF executable"),
    "text": Refused(make_text, UnsupportedImage, "is a text file"),
    "parallels": Refused(make_parallels, UnsupportedImage, "is a Parallels disk image"),
    "dmg": Refused(make_dmg, UnsupportedImage, "Apple disk image (DMG)"),
    "bochs": Refused(make_bochs, UnsupportedImage, "is a Bochs disk image"),
}

# A name suggesting some other format, for each format (content must win over the name).
_MISLEADING = {
    ImageFormat.QCOW2: "router.vmdk",
    ImageFormat.VMDK: "router.qcow2",
    ImageFormat.VDI: "router.vhd",
    ImageFormat.VHDX: "router.vdi",
    ImageFormat.VHD: "router.vhdx",
    ImageFormat.RAW: "router.iso",
    ImageFormat.ISO: "router.qcow2",
}


__all__ += sorted(name for name in list(globals()) if name.startswith("make_"))


def misleading_name(case: str) -> str:
    """A file name for ``case`` that names a format its content is not."""
    if case in ACCEPTED:
        return _MISLEADING[ACCEPTED[case].format]
    return "router.vmdk" if case.startswith("qcow") else "router.qcow2"


def make_disguised(case: str, directory: Path) -> Path:
    """Make the ACCEPTED or REFUSED ``case`` under a misleading name (e.g. a VMDK as
    ``router.qcow2``)."""
    maker = ACCEPTED[case].maker if case in ACCEPTED else REFUSED[case].maker
    return maker(directory, misleading_name(case))
