"""Files that are no disk image virtlab takes: archives, programs, text, other formats."""

from __future__ import annotations

import gzip
import io
import shutil
import struct
import tarfile
import zipfile
from pathlib import Path

from support.formats._plumbing import DISK_SIZE, PATTERN, MiB, _created, _target, _tool
from support.formats.media import make_iso9660, make_pattern_raw


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
