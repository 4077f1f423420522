"""The verdict on a file that passed: what its content is and what it claims."""

from __future__ import annotations

from dataclasses import dataclass

from virtlab.images.formats import ImageFormat

__all__ = ["Inspection"]


@dataclass(frozen=True)
class Inspection:
    """What the content of one file is, once it passed every safety check."""

    format: ImageFormat
    # e.g. "v2", "v3", "monolithicSparse", "streamOptimized", "dynamic", "fixed", "plain", "mbr",
    # "gpt", "iso9660", "udf"
    variant: str
    virtual_size: int  # bytes the guest sees
    # known-safe features found: "dirty", "lazy_refcounts", "snapshots", "bitmaps",
    # "extended_l2", "zstd", "compressed", "hybrid"
    features: tuple[str, ...] = ()
    # what the second detector (oslo.utils' format inspector) saw, e.g. ("gpt", "iso")
    second_opinion: tuple[str, ...] = ()
