"""The image formats virtlab knows, by the names users see, and how qemu names them."""

from __future__ import annotations

import enum

__all__ = ["ImageFormat", "ImageKind"]


class ImageKind(enum.StrEnum):
    """What a catalog image is to a node: a hard disk, or a CD-ROM medium."""

    DISK = "disk"
    CDROM = "cdrom"


class ImageFormat(enum.StrEnum):
    """A disk image format, named as users know it (``vhd``, not qemu's ``vpc``)."""

    QCOW2 = "qcow2"
    VMDK = "vmdk"
    VDI = "vdi"
    VHDX = "vhdx"
    VHD = "vhd"
    RAW = "raw"
    ISO = "iso"

    @property
    def qemu_driver(self) -> str:
        """The name qemu-img's ``-f`` takes for this format."""
        return _QEMU_DRIVER.get(self, self.value)

    @property
    def kind(self) -> ImageKind:
        return ImageKind.CDROM if self is ImageFormat.ISO else ImageKind.DISK

    @property
    def checkable(self) -> bool:
        """Whether ``qemu-img check`` understands this format."""
        return self in _CHECKABLE


_QEMU_DRIVER = {ImageFormat.VHD: "vpc", ImageFormat.ISO: "raw"}
_CHECKABLE = frozenset({ImageFormat.QCOW2, ImageFormat.VMDK, ImageFormat.VDI, ImageFormat.VHDX})
