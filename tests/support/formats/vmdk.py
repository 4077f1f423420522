"""VMDK images: sparse and stream-optimized, and descriptors that reach for other files."""

from __future__ import annotations

import struct
from pathlib import Path

from support.formats._plumbing import (
    DISK_SIZE,
    MiB,
    _converted,
    _created,
    _patch,
    _qemu_img,
    _read,
    _target,
)


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
