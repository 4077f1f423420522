"""Reading image headers in Python, before any qemu tool touches a file.

``inspect_file`` says which format a file's *content* is (never its name), what the header claims
(virtual size, backing file, data file, extents, encryption, features) and whether virtlab may
let it in. It refuses, with a reason a person can act on, anything that would make qemu read
another file or that cannot be trusted.

The steps::

    survey (detect.py)      every signature, independently: magic numbers, 32 KiB, last 512 bytes
    choose (detect.py)      one claim, or refuse: several meanings, foreign content, text
    parse (qcow, vmware,    the claimed format's header, strictly: refuse what qemu would
      vhd, vhdx, vbox,      follow outside the file, what is encrypted, damaged or unknown
      media)
    size                    zero or absurd → corrupt; past the caller's cap → too large
    second opinion (oslo)   oslo.utils' detector must see the same format

Only headers and the regions they point to are read (``ImageSource`` counts every byte).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from virtlab.errors import UnsafeImage, UnsupportedImage

from . import oslo
from .detect import Kind, choose, survey
from .foreign import refuse_luks
from .media import inspect_iso, inspect_raw
from .qcow import inspect_qcow2, refuse_qed
from .result import Inspection
from .source import ImageSource
from .vbox import inspect_vdi
from .verdict import Subject, format_name
from .vhd import inspect_vhd
from .vhdx import inspect_vhdx
from .vmware import inspect_sparse, refuse_cowd, refuse_descriptor_file

__all__ = ["ImageSource", "Inspection", "inspect_file", "inspect_source"]

ABSURD_SIZE = 1 << 63  # no disk is this large; a header claiming it is broken

_INSPECTORS: dict[Kind, Callable[[ImageSource, Subject], Inspection]] = {
    Kind.QCOW2: inspect_qcow2,
    Kind.QED: refuse_qed,
    Kind.VMDK: inspect_sparse,
    Kind.VMDK_COWD: refuse_cowd,
    Kind.VMDK_TEXT: refuse_descriptor_file,
    Kind.VDI: inspect_vdi,
    Kind.VHD: inspect_vhd,
    Kind.VHD_FIXED: inspect_vhd,
    Kind.VHDX: inspect_vhdx,
    Kind.LUKS: refuse_luks,
    Kind.ISO: inspect_iso,
    Kind.RAW: inspect_raw,
}


def inspect_file(path: Path, *, display_name: str, max_virtual_size: int) -> Inspection:
    """Detect and safety-check ``path``.

    Raises an ``ImageRejected`` subclass whose message names ``display_name``.
    """
    with ImageSource.open(path) as src:
        return inspect_source(src, display_name=display_name, max_virtual_size=max_virtual_size)


def inspect_source(src: ImageSource, *, display_name: str, max_virtual_size: int) -> Inspection:
    """``inspect_file`` over an open source (whose ``bytes_read`` then shows what was read)."""
    subject = Subject(display_name)
    if src.size == 0:
        raise UnsupportedImage(f"{subject.name} is empty; upload the disk image itself")
    claim = choose(survey(src), subject)
    found = _INSPECTORS[claim.kind](src, subject)
    _check_size(found, subject, max_virtual_size)
    opinion = oslo.second_opinion(src)
    contradiction = oslo.disagreement(found, opinion)
    if contradiction:
        raise UnsafeImage(
            f"{subject.name} {contradiction}; refusing an image that means different things to "
            "different readers"
        )
    return replace(found, second_opinion=opinion.formats)


def _check_size(found: Inspection, subject: Subject, limit: int) -> None:
    what = f"{format_name(found.format)} ({found.variant})"
    if found.virtual_size <= 0:
        raise subject.corrupt(what, "with a virtual size of zero")
    if found.virtual_size >= ABSURD_SIZE:
        raise subject.corrupt(what, "with an impossible virtual size")
    if found.virtual_size > limit:
        raise subject.too_large(what, found.virtual_size, limit)
