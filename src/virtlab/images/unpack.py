"""Peeling wrappers off an upload: gzip, xz, bzip2, zstd, and OVA (a tar with an OVF descriptor).

Wrappers are recognised by their content, never by the file name. Decompression streams in
chunks with a cap on the expanded size that trips as soon as it is passed (a 600 KB xz that
would expand to 4 GiB is stopped after the cap, not after 4 GiB). OVA members are extracted
only when they are regular files with plain names, and only those the descriptor references.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import tarfile
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from virtlab._util.units import human_size
from virtlab.errors import CorruptImage, TooLarge, UnsupportedImage
from virtlab.names import UPLOAD, shown

__all__ = ["Payload", "sniff_wrapper", "unwrap"]

CHUNK = 1 << 20
MAX_DEPTH = 3
MAX_OVF_BYTES = 1 << 20

_MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"BZh", "bzip2"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
_OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1"


@dataclass(frozen=True)
class Payload:
    """One bare image file left once every wrapper is off."""

    path: Path
    label: str  # how to name it to the user: "router.ova: disk1.vmdk", or the upload's name
    wrappers: tuple[str, ...]  # outermost first, e.g. ("gzip", "ova")


def sniff_wrapper(path: Path) -> str | None:
    """The wrapper ``path`` is in (``gzip``, ``xz``, ``bzip2``, ``zstd``, ``tar``) or None."""
    with path.open("rb") as f:
        head = f.read(512)
    for magic, name in _MAGICS:
        if head.startswith(magic):
            if name == "bzip2" and not (len(head) > 3 and head[3:4].isdigit()):
                continue
            return name
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


def unwrap(
    path: Path,
    *,
    label: str,
    workdir: Path,
    max_expanded: int,
    on_progress: Callable[[int], None] | None = None,
) -> list[Payload]:
    """Peel every wrapper off ``path`` (consumed) and return the bare image files inside."""
    return _unwrap(path, label, workdir, max_expanded, on_progress, (), 0)


def _unwrap(
    path: Path,
    label: str,
    workdir: Path,
    cap: int,
    on_progress: Callable[[int], None] | None,
    wrappers: tuple[str, ...],
    depth: int,
) -> list[Payload]:
    kind = sniff_wrapper(path)
    if kind is None:
        return [Payload(path, label, wrappers)]
    if depth >= MAX_DEPTH:
        raise UnsupportedImage(
            f"{label} is wrapped more than {MAX_DEPTH} levels deep ({' in '.join(wrappers)}); "
            "unpack it yourself and upload the image inside"
        )
    if kind == "tar":
        members = _extract_ova(path, label, workdir, cap, depth)
        path.unlink()
        found: list[Payload] = []
        for member_path, member_label in members:
            found += _unwrap(
                member_path, member_label, workdir, cap, on_progress, (*wrappers, "ova"), depth + 1
            )
        return found
    out = workdir / f"unwrapped-{depth}"
    _decompress(path, out, kind, label, cap, on_progress)
    path.unlink()
    return _unwrap(out, label, workdir, cap, on_progress, (*wrappers, kind), depth + 1)


def _chunks(kind: str, src: BinaryIO) -> Iterator[bytes]:
    """Decompressed chunks of ``src``, each at most ``CHUNK`` bytes; concatenated streams too.

    The standard library's file readers bound every read, so a bomb never expands at once; a
    stream cut short raises ``EOFError``.
    """
    if kind == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=True)
    else:
        opener = {"gzip": gzip.GzipFile, "xz": lzma.LZMAFile, "bzip2": bz2.BZ2File}[kind]
        reader = opener(fileobj=src, mode="rb") if kind == "gzip" else opener(src, mode="rb")
    with reader:
        while block := reader.read(CHUNK):
            yield block


def _decompress(
    src: Path,
    dst: Path,
    kind: str,
    label: str,
    cap: int,
    on_progress: Callable[[int], None] | None,
) -> None:
    written = 0
    try:
        with src.open("rb") as fin, dst.open("wb") as fout:
            for block in _chunks(kind, fin):
                written += len(block)
                if written > cap:
                    raise TooLarge(
                        f"{label} expands past the limit of {human_size(cap)} when its {kind} "
                        f"compression is undone; refusing it (raise max_expanded_bytes if it "
                        "is genuine)"
                    )
                fout.write(block)
                if on_progress is not None:
                    on_progress(fin.tell())
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError, zstandard.ZstdError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # a real I/O error (disk full...), not bad input
        raise CorruptImage(
            f"{label} is {kind}-compressed but its compressed data is damaged or cut short "
            f"({exc}); upload it again or check the file with `{kind} -t`"
        ) from exc


def _extract_ova(
    path: Path, label: str, workdir: Path, cap: int, depth: int
) -> list[tuple[Path, str]]:
    try:
        with tarfile.open(path, mode="r:") as tar:
            members = tar.getmembers()
            ovfs = [m for m in members if m.name.lower().endswith(".ovf")]
            if not ovfs:
                raise UnsupportedImage(
                    f"{label} is a tar archive without an OVF descriptor, so not an OVA; "
                    "upload the disk image inside it instead"
                )
            ovf = _checked_member(ovfs[0], label)
            if ovf.size > MAX_OVF_BYTES:
                raise UnsupportedImage(f"{label}: its OVF descriptor is larger than 1 MiB")
            handle = tar.extractfile(ovf)
            assert handle is not None
            wanted = _ovf_disk_files(handle.read(), label)
            by_name = {m.name: m for m in members}
            extracted = []
            total = 0
            for index, href in enumerate(wanted):
                member = by_name.get(href)
                if member is None:
                    raise CorruptImage(
                        f"{label}: its OVF descriptor names the disk '{href}', which the archive "
                        "does not contain"
                    )
                _checked_member(member, label)
                total += member.size
                if total > cap:
                    raise TooLarge(
                        f"{label} holds more than {human_size(cap)} of disks; refusing it"
                    )
                out = workdir / f"ova-{depth}-{index}"
                source = tar.extractfile(member)
                assert source is not None
                with out.open("wb") as fout:
                    while block := source.read(CHUNK):
                        fout.write(block)
                extracted.append((out, f"{label}: {href}"))
            return extracted
    except tarfile.TarError as exc:
        raise CorruptImage(f"{label} looks like a tar archive but cannot be read ({exc})") from exc


def _checked_member(member: tarfile.TarInfo, label: str) -> tarfile.TarInfo:
    name = member.name
    if UPLOAD.problem(name):  # the same rule as an upload's own file name
        raise CorruptImage(
            f"{label}: the OVA member {shown(name)} is not a plain file name (paths and '..' are "
            f"refused so nothing is written outside the upload; {UPLOAD.sentence})"
        )
    if not member.isreg():
        raise CorruptImage(
            f"{label}: the OVA member {shown(name)} is not a regular file (links and devices are "
            "refused)"
        )
    return member


def _ovf_disk_files(descriptor: bytes, label: str) -> list[str]:
    if b"<!DOCTYPE" in descriptor or b"<!ENTITY" in descriptor:
        raise CorruptImage(f"{label}: its OVF descriptor declares a DTD or entities; refusing it")
    try:
        root = ET.fromstring(descriptor)
    except ET.ParseError as exc:
        raise CorruptImage(f"{label}: its OVF descriptor is not valid XML ({exc})") from exc
    files = {}
    for element in root.iter(f"{{{_OVF_NS}}}File"):
        ident = element.get(f"{{{_OVF_NS}}}id")
        href = element.get(f"{{{_OVF_NS}}}href")
        if ident and href:
            if element.get(f"{{{_OVF_NS}}}compression"):
                raise UnsupportedImage(
                    f"{label}: its disk '{href}' uses OVF chunked compression, which virtlab "
                    "does not read; export the appliance without compression"
                )
            files[ident] = href
    disks = [
        files[ref]
        for disk in root.iter(f"{{{_OVF_NS}}}Disk")
        if (ref := disk.get(f"{{{_OVF_NS}}}fileRef")) in files
    ]
    if not disks:
        raise UnsupportedImage(f"{label}: its OVF descriptor names no disk; nothing to import")
    return disks
