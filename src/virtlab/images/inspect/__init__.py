"""Reading image headers in Python, before any qemu tool touches a file.

Status: interface only; the implementation lands in the next commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from virtlab.images.formats import ImageFormat

__all__ = ["Inspection", "inspect_file"]


@dataclass(frozen=True)
class Inspection:
    """What the content of one file is, once it passed every safety check."""

    format: ImageFormat
    variant: str
    virtual_size: int
    features: tuple[str, ...] = ()


def inspect_file(path: Path, *, display_name: str, max_virtual_size: int) -> Inspection:
    """Detect and safety-check ``path``; raise an ``ImageRejected`` naming ``display_name``."""
    raise NotImplementedError
