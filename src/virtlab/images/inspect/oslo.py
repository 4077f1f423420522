"""A second, independent detector: OpenStack oslo.utils' format inspector.

Our own parsers give the precise verdicts and messages; oslo's ``InspectWrapper`` must then see
the same format, or the file is refused as meaning different things to different readers.

How it is fed: ``InspectWrapper`` is a streaming reader that runs every inspector over the bytes
it is given, and ``detect_file_format`` reads until every inspector has decided. Most decide
within 256 KiB (the VHDX region table is the farthest fixed field), but some never do before
end of file: a VMDK whose grain directory is at its end keeps an end-of-stream capture region
open, and a VHDX's metadata may be anywhere. So it is fed at most ``HEAD_LIMIT`` bytes from the
start, then told the stream ended. That is enough for every format it knows (a VMDK descriptor
is at most 1 MiB at 512; qemu puts VHDX metadata at 3 MiB), and it keeps a 256 GiB raw file from
being read whole. What it therefore cannot see, we check ourselves: oslo looks for a VHD footer
only at the start (so a fixed VHD is "raw" to it), and its streamOptimized footer check is fed
the wrong bytes (our VMDK parser checks that footer itself).

Where oslo's *policy* differs, ours wins, explicitly (see ``OVERRIDDEN``): oslo refuses qcow2
incompatible bit 4 (extended L2), which we accept; oslo ignores the corrupt bit and encryption,
which we refuse. Its safety checks are consulted only for qcow2 and VMDK, the formats where they
judge something (backing and data files, unknown features, VMDK extents); for the others they
are empty, or (MBR partition entries) about raw content, which is the guest's business.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from virtlab.images.formats import ImageFormat

from .result import Inspection
from .source import ImageSource
from .verdict import format_name

if TYPE_CHECKING:
    from oslo_utils.imageutils import format_inspector as fi

__all__ = ["HEAD_LIMIT", "OVERRIDDEN", "SecondOpinion", "disagreement", "second_opinion"]

log = logging.getLogger(__name__)

HEAD_LIMIT = 8 * 1024 * 1024
CHUNK = 64 * 1024
CONSULTED = {"qcow2", "vmdk"}  # whose oslo safety checks judge what our parsers judge
# Oslo safety checks whose failure we overrule, and why.
OVERRIDDEN = {
    ("qcow2", "unknown_features"): "oslo knows incompatible bits 0-3; bit 4 (extended L2) is "
    "safe, and our parser refuses every bit it does not know",
    ("vmdk", "footer"): "oslo is fed the start of the file only; our parser checks the footer",
}

# The oslo format sets that agree with each of our (format, variant).
_RAW = {("raw",), ("gpt",)}
_AGREEING: dict[tuple[ImageFormat, str | None], set[tuple[str, ...]]] = {
    (ImageFormat.QCOW2, None): {("qcow2",)},
    (ImageFormat.VMDK, None): {("vmdk",)},
    (ImageFormat.VDI, None): {("vdi",)},
    (ImageFormat.VHDX, None): {("vhdx",)},
    (ImageFormat.VHD, "dynamic"): {("vhd",)},
    (ImageFormat.VHD, "fixed"): _RAW,  # oslo looks for the footer at the start only
    (ImageFormat.RAW, None): _RAW,  # oslo's "gpt" is any MBR boot signature
    (ImageFormat.ISO, "iso9660"): {("iso",), ("gpt", "iso")},  # hybrid ISOs
    # oslo matches UDF by NSR0x at 32 KiB only, where a UDF medium has BEA01
    (ImageFormat.ISO, "udf"): {("iso",), ("raw",), ("gpt", "iso"), ("gpt",)},
}


@dataclass(frozen=True)
class SecondOpinion:
    """What oslo.utils saw: its format names, sorted, and the safety checks that failed."""

    formats: tuple[str, ...]
    objections: tuple[str, ...] = ()
    failure: str = ""  # oslo itself failed (the exception, for logs)


class _Head:
    """A file-like view of the first ``limit`` bytes of a source, read in order."""

    def __init__(self, src: ImageSource, limit: int) -> None:
        self._src, self._pos, self._end = src, 0, min(limit, src.size)

    def read(self, size: int) -> bytes:
        data = self._src.read(self._pos, min(size, self._end - self._pos))
        self._pos += len(data)
        return data

    def close(self) -> None:  # InspectWrapper.close() closes its source: the file is ours
        pass


def second_opinion(src: ImageSource, limit: int = HEAD_LIMIT) -> SecondOpinion:
    """Run oslo's detection over the start of ``src`` (see the module docstring for why)."""
    # Imported at the first inspection, not with the server: oslo.utils' import (its strutils
    # compiles many regular expressions) is a tenth of a second of every start-up otherwise.
    from oslo_utils.imageutils import format_inspector as fi

    try:
        wrapper = fi.InspectWrapper(_Head(src, limit))  # type: ignore[arg-type]
        while wrapper.read(CHUNK):
            if wrapper.formats is not None:
                break
        wrapper.close()  # marks end of stream: undecided inspectors become non-matches
        found = wrapper.formats or []
        names = tuple(sorted(str(i) for i in found))
        objections: tuple[str, ...] = ()
        if len(found) == 1 and names[0] in CONSULTED:
            objections = _objections(found[0])
    except Exception as exc:  # oslo must not decide by crashing: the caller refuses
        log.warning("oslo.utils format inspection failed: %r", exc)
        return SecondOpinion((), failure=repr(exc))
    return SecondOpinion(names, objections)


def _objections(inspector: fi.FileInspector) -> tuple[str, ...]:
    from oslo_utils.imageutils import format_inspector as fi

    try:
        inspector.safety_check()
    except fi.SafetyCheckFailed as exc:
        return tuple(sorted(exc.failures))
    except fi.ImageFormatError:
        return ("incomplete",)
    return ()


def disagreement(ours: Inspection, opinion: SecondOpinion) -> str | None:
    """How the second opinion contradicts ours (a phrase after the file name), or None."""
    what = f"{format_name(ours.format)} ({ours.variant})"
    if opinion.failure:
        return f"is {what} to virtlab, but a second inspector (oslo.utils) failed to read it"
    accepted = _AGREEING.get((ours.format, ours.variant)) or _AGREEING[(ours.format, None)]
    if opinion.formats not in accepted:
        if len(opinion.formats) > 1:
            names = " and ".join(opinion.formats)
            return f"matches more than one format ({names}, says a second inspector, oslo.utils)"
        seen = opinion.formats[0] if opinion.formats else "nothing"
        return f"is {what} to virtlab, but {seen} to a second inspector (oslo.utils)"
    fmt = opinion.formats[0] if len(opinion.formats) == 1 else ""
    left = [o for o in opinion.objections if (fmt, o) not in OVERRIDDEN]
    if left:
        return f"is {what} that a second inspector (oslo.utils) objects to ({', '.join(left)})"
    return None
