"""Making OVA appliances (a tar: the OVF descriptor first, then the disks it names)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

__all__ = ["make_ova", "ovf_descriptor"]


def ovf_descriptor(disk_files: list[str]) -> bytes:
    """A minimal OVF 1.x envelope naming ``disk_files`` in its References and DiskSection."""
    refs = "".join(
        f'<File ovf:id="file{i}" ovf:href="{name}"/>' for i, name in enumerate(disk_files, 1)
    )
    disks = "".join(
        f'<Disk ovf:diskId="vmdisk{i}" ovf:fileRef="file{i}" ovf:capacity="1" '
        'ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>'
        for i in range(1, len(disk_files) + 1)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" '
        'xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">'
        f"<References>{refs}</References>"
        f"<DiskSection><Info>Virtual disks</Info>{disks}</DiskSection>"
        '<VirtualSystem ovf:id="vm"><Info>A virtual machine</Info></VirtualSystem>'
        "</Envelope>"
    ).encode()


def make_ova(path: Path, disks: dict[str, bytes | Path]) -> Path:
    """Write an OVA at ``path`` holding ``disks`` (bytes, or files to copy in)."""
    ovf = ovf_descriptor(list(disks))
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(f"{path.stem}.ovf")
        info.size = len(ovf)
        tar.addfile(info, io.BytesIO(ovf))
        for name, content in disks.items():
            if isinstance(content, Path):
                tar.add(content, arcname=name)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return path
