"""Content that is clearly something other than a disk image virtlab accepts.

Raw is the fallback for any binary content, so that zeros, random data, a file system or a
partitioned disk all import. But an archive, a program, a document, compressed data, a disk
format qemu reads and virtlab does not accept, an encrypted container or plain text is refused
by name rather than silently imported as a raw disk.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import NoReturn

from .source import ImageSource
from .verdict import Subject

__all__ = ["LUKS_MAGIC", "Foreign", "identify", "is_text", "refuse_foreign", "refuse_luks"]

LUKS_MAGIC = b"LUKS\xba\xbe"
UNPACK = "unpack it and upload the disk image inside"
DECOMPRESS = "decompress it and upload the disk image inside"
NOT_A_DISK = "upload a disk image (qcow2, VMDK, VDI, VHD, VHDX, raw or ISO)"


@dataclass(frozen=True)
class Foreign:
    name: str  # short, for "matches more than one format (qcow2 and zip)"
    what: str  # "a ZIP archive"
    qemu_driver: str = ""  # set for disk formats qemu reads that virtlab does not accept

    def todo(self, subject: Subject) -> str:
        if self.qemu_driver:
            return (
                f"convert it where it was made: qemu-img convert -f {self.qemu_driver} "
                f"-O qcow2 {subject.arg} disk.qcow2"
            )
        if self.name in ("gzip", "xz", "bzip2", "zstd"):
            return DECOMPRESS
        if self.name in ("zip", "tar", "7z", "rar"):
            return UNPACK
        return NOT_A_DISK


# Magic numbers at offset 0 (file(1)'s magic database; qemu's block/*.c probes).
_AT_START: tuple[tuple[bytes, Foreign], ...] = (
    (b"PK\x03\x04", Foreign("zip", "a ZIP archive")),
    (b"PK\x05\x06", Foreign("zip", "an empty ZIP archive")),
    (b"\x7fELF", Foreign("elf", "an ELF executable")),
    (b"\x1f\x8b\x08", Foreign("gzip", "gzip-compressed data")),
    (b"\xfd7zXZ\x00", Foreign("xz", "xz-compressed data")),
    (b"\x28\xb5\x2f\xfd", Foreign("zstd", "zstd-compressed data")),
    (b"7z\xbc\xaf\x27\x1c", Foreign("7z", "a 7-Zip archive")),
    (b"Rar!\x1a\x07", Foreign("rar", "a RAR archive")),
    (b"%PDF-", Foreign("pdf", "a PDF document")),
    (b"\x89PNG\r\n\x1a\n", Foreign("png", "a PNG image")),
    (b"WithoutFreeSpace", Foreign("parallels", "a Parallels disk image", "parallels")),
    (b"WithouFreSpacExt", Foreign("parallels", "a Parallels disk image", "parallels")),
    (b"Bochs Virtual HD Image", Foreign("bochs", "a Bochs disk image", "bochs")),
    (b"#!/bin/sh\n#V2.0 Format\n", Foreign("cloop", "a cloop compressed image", "cloop")),
    (b"encrcdsa", Foreign("dmg", "an encrypted Apple disk image (DMG)")),
)
_BZIP2 = Foreign("bzip2", "bzip2-compressed data")
_TAR = Foreign("tar", "a tar archive")
_DMG = Foreign("dmg", "an Apple disk image (DMG)", "dmg")
TEXT = Foreign("text", "a text file")


def identify(head: bytes, tail: bytes) -> list[Foreign]:
    """Every foreign format the start (``head``) or the last 512 bytes (``tail``) claim."""
    found = [foreign for magic, foreign in _AT_START if head.startswith(magic)]
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] == b"1AY&SY":
        found.append(_BZIP2)
    if head[257:262] == b"ustar":
        found.append(_TAR)
    if len(tail) == 512 and tail[:4] == b"koly":  # UDIF trailer (qemu block/dmg.c)
        found.append(_DMG)
    return found


def is_text(head: bytes) -> bool:
    """Whether the start of a file reads as text (UTF-8, no control characters but spacing)."""
    sample = head[:4096]
    if not sample:
        return False
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\n\r\f\v" for c in text)


def refuse_foreign(subject: Subject, foreign: Foreign) -> NoReturn:
    wrong = "in a format virtlab does not accept" if foreign.qemu_driver else "and not a disk image"
    raise subject.unsupported(foreign.what, wrong, foreign.todo(subject))


def refuse_luks(src: ImageSource, subject: Subject) -> NoReturn:
    version = int.from_bytes(src.read(6, 2), "big")
    raise subject.unsafe(
        f"a LUKS container (version {version})",
        "whose contents are encrypted; virtlab cannot check what is inside an encrypted image",
        "decrypt it first and upload the plain disk image",
    )
