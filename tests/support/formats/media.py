"""Raw disks (zeros, random, FAT, MBR, GPT) and optical media (ISO 9660, hybrid, UDF)."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from support.formats._plumbing import (
    DISK_SIZE,
    PATTERN,
    MiB,
    _run,
    _target,
    make_pattern_raw,
)


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
