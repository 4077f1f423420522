"""How refusals are worded: "<name> is <what> <what is wrong>; <what to do>".

Every inspector raises through a :class:`Subject`, so each message names the upload the way the
person knows it, says what the content is, what is wrong with it, and what to do about it.
Names taken from inside a file (backing files, extents, parents) are shown only through
:func:`quoted`: printable ASCII, truncated.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from virtlab.errors import CorruptImage, ImageRejected, TooLarge, UnsafeImage, UnsupportedImage
from virtlab.images.formats import ImageFormat

__all__ = ["Subject", "format_name", "human_size", "join_names", "quoted"]

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
OUTSIDE = "refusing to read files outside the upload"
CONVERT_TODO = "convert it to qcow2 where it was made, then upload that"


_FORMAT_NAMES = {
    ImageFormat.QCOW2: "a qcow2 image",
    ImageFormat.VMDK: "a VMDK",
    ImageFormat.VDI: "a VDI",
    ImageFormat.VHD: "a VHD",
    ImageFormat.VHDX: "a VHDX",
    ImageFormat.RAW: "a raw image",
    ImageFormat.ISO: "an ISO",
}


def format_name(fmt: ImageFormat) -> str:
    """``a qcow2 image``, ``an ISO``: a format as a message's subject complement."""
    return _FORMAT_NAMES[fmt]


def human_size(n: int) -> str:
    """``4.0 TiB`` style: binary units, one decimal; plain bytes below 1 KiB."""
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def quoted(raw: bytes | str, limit: int = 64) -> str:
    """A name from inside a file, made safe to show: printable ASCII only, at most ``limit``."""
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)
    if len(clean) > limit:
        clean = clean[: limit - 3] + "..."
    return f"'{clean}'"


def join_names(names: list[str]) -> str:
    """``a and b``, ``a, b and c``."""
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


@dataclass(frozen=True)
class Subject:
    """The upload under inspection, as messages name it."""

    display_name: str

    @property
    def name(self) -> str:
        """The display name with control characters replaced (it comes from a client)."""
        text = "".join(c if c.isprintable() else "?" for c in self.display_name)
        return text if len(text) <= 200 else text[:197] + "..."

    @property
    def arg(self) -> str:
        """The display name quoted for a shell command line in advice."""
        return shlex.quote(self.name)

    def _say(self, cls: type[ImageRejected], what: str, wrong: str, todo: str) -> ImageRejected:
        return cls(f"{self.name} is {what} {wrong}; {todo}")

    def corrupt(self, what: str, wrong: str, todo: str = "") -> ImageRejected:
        todo = todo or "the file is damaged or was cut short; upload an intact copy"
        return self._say(CorruptImage, what, wrong, todo)

    def unsafe(self, what: str, wrong: str, todo: str) -> ImageRejected:
        return self._say(UnsafeImage, what, wrong, todo)

    def unsupported(self, what: str, wrong: str, todo: str = "") -> ImageRejected:
        return self._say(UnsupportedImage, what, wrong, todo or CONVERT_TODO)

    def outside(self, what: str, wrong: str, todo: str) -> ImageRejected:
        """Refuse an image that would make qemu open another file."""
        return UnsafeImage(f"{self.name} is {what} {wrong}; {OUTSIDE}. {todo}")

    def too_large(self, what: str, size: int, limit: int) -> ImageRejected:
        return self._say(
            TooLarge,
            what,
            f"and claims a virtual size of {human_size(size)}, past the limit of "
            f"{human_size(limit)}",
            "shrink the disk where it was made, or ask an administrator to raise the limit",
        )

    def flatten(self, fmt: str = "qcow2") -> str:
        """Advice to make a self-contained copy where the other files are."""
        return (
            f"Flatten it first, where its other files are: "
            f"qemu-img convert -O {fmt} {self.arg} flat.{fmt}"
        )
