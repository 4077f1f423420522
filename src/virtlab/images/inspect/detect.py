"""Which formats a file's content claims to be, before any one of them is believed.

Every signature is looked for independently: magic numbers at the start, a VDI signature at
0x40, ISO/UDF descriptors at 32 KiB, a VHD footer or DMG trailer in the last 512 bytes, an MBR or
GPT. One claim is then chosen, or the file is refused because it means different things to
different readers (a qcow2 header in an ISO's system area, a qcow2 with a partition table...).
The legitimate overlaps are: a hybrid ISO (an MBR/GPT in its system area) and a fixed VHD (raw
data, so possibly a partitioned disk, followed by its footer).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from virtlab.errors import UnsafeImage

from .foreign import LUKS_MAGIC, TEXT, Foreign, identify, is_text, refuse_foreign
from .media import has_gpt, iso_variant, plausible_mbr
from .qcow import QCOW_MAGIC, QED_MAGIC
from .source import ImageSource
from .vbox import is_vdi
from .verdict import Subject, join_names
from .vhd import VHD_COOKIE
from .vhdx import VHDX_SIGNATURE
from .vmware import COWD_MAGIC, KDMV_MAGIC, looks_like_descriptor

__all__ = ["Claim", "Kind", "Survey", "choose", "survey"]

HEAD = 64 * 1024  # every start-of-file signature, the tar header, a descriptor's first lines


class Kind(enum.Enum):
    """What an inspector would be handed the file as."""

    QCOW2 = "qcow2"
    QED = "qed"
    VMDK = "vmdk"
    VMDK_COWD = "vmdk-cowd"
    VMDK_TEXT = "vmdk-descriptor"
    VDI = "vdi"
    VHD = "vhd"  # footer copy at the start: dynamic or differencing
    VHD_FIXED = "vhd-fixed"  # footer at the end only
    VHDX = "vhdx"
    LUKS = "luks"
    ISO = "iso"
    RAW = "raw"
    FOREIGN = "foreign"


# Formats that own the whole file from byte 0: a partition table in them is a second meaning.
_WHOLE_FILE = {Kind.QCOW2, Kind.VMDK, Kind.VDI, Kind.VHD, Kind.VHDX}
_AT_START = (
    (QCOW_MAGIC, Kind.QCOW2, "qcow2"),
    (QED_MAGIC, Kind.QED, "qed"),
    (KDMV_MAGIC, Kind.VMDK, "vmdk"),
    (COWD_MAGIC, Kind.VMDK_COWD, "vmdk"),
    (VHD_COOKIE, Kind.VHD, "vhd"),
    (VHDX_SIGNATURE, Kind.VHDX, "vhdx"),
    (LUKS_MAGIC, Kind.LUKS, "luks"),
)


@dataclass(frozen=True)
class Claim:
    kind: Kind
    name: str  # as shown in "matches more than one format (qcow2 and iso)"
    foreign: Foreign | None = None


@dataclass(frozen=True)
class Survey:
    claims: tuple[Claim, ...]
    partitions: tuple[str, ...]  # "mbr", "gpt"
    text: bool


def survey(src: ImageSource) -> Survey:
    """Look for every signature; believe none yet."""
    head = src.read(0, HEAD)
    tail = src.tail(512) if src.size >= 1024 else b""
    claims = [Claim(kind, name) for magic, kind, name in _AT_START if head.startswith(magic)]
    if is_vdi(head):
        claims.append(Claim(Kind.VDI, "vdi"))
    claims += [Claim(Kind.FOREIGN, f.name, f) for f in identify(head, tail)]
    text = is_text(head)
    if not claims and text and looks_like_descriptor(head):
        claims.append(Claim(Kind.VMDK_TEXT, "vmdk"))
    if iso_variant(src):
        claims.append(Claim(Kind.ISO, "iso"))
    if tail[:8] == VHD_COOKIE and not any(c.kind is Kind.VHD for c in claims):
        claims.append(Claim(Kind.VHD_FIXED, "vhd"))
    partitions = tuple(
        name
        for name, present in (("mbr", plausible_mbr(head[:512])), ("gpt", has_gpt(src)))
        if present
    )
    return Survey(tuple(claims), partitions, text)


def choose(found: Survey, subject: Subject) -> Claim:
    """The one claim to believe, or a refusal: several meanings, foreign content, plain text."""
    if len(found.claims) > 1:
        raise several(subject, [c.name for c in found.claims])
    if found.claims:
        claim = found.claims[0]
        if claim.foreign is not None:
            refuse_foreign(subject, claim.foreign)
        if claim.kind in _WHOLE_FILE and found.partitions:
            raise several(subject, [claim.name, *found.partitions])
        return claim
    if not found.partitions and found.text:
        refuse_foreign(subject, TEXT)
    return Claim(Kind.RAW, "raw")


def several(subject: Subject, names: list[str]) -> UnsafeImage:
    return UnsafeImage(
        f"{subject.name} matches more than one format ({join_names(names)}); refusing an image "
        "that means different things to different readers"
    )
