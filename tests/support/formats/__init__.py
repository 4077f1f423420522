"""Test disk images: one maker per format virtlab accepts and per kind of image it refuses.

Every ``make_*`` function writes one image into ``directory`` and returns its path; pass ``name``
to save it under another (say, misleading) file name. Helper files a maker needs (a backing
file, a data file, flat extents) land next to it. Real tools make the real formats (qemu-img 7.2,
xorriso, mkudffs, sfdisk, mkfs.fat); hostile headers are crafted with ``struct`` on top of them.

The disk images hold real data: :func:`make_pattern_raw` writes :data:`PATTERN` at
:data:`PATTERN_OFFSETS` of a :data:`DISK_SIZE` disk, and the qcow2/VMDK/VDI/VHD/VHDX images are
converted from it, so comparing an imported image with ``make_pattern_raw``'s output
(``qemu-img compare``) means something.

Registries, for parametrized tests (and the importer, API and benchmark tests)::

    ACCEPTED: case name -> Accepted(maker, format, variant)
    REFUSED:  case name -> Refused(maker, error, needle)   # needle: a substring of the message

REFUSED expectations assume ``max_virtual_size=CAP``; ACCEPTED images are all far below it.
:func:`make_disguised` makes any case under a name that suggests another format.
"""

from __future__ import annotations

from pathlib import Path

from support.formats._plumbing import (  # noqa: F401
    CAP,
    DISK_SIZE,
    PATTERN,
    PATTERN_OFFSETS,
    SECRET,
    Accepted,
    Maker,
    MiB,
    Refused,
    make_pattern_raw,
)
from support.formats.media import (
    make_iso9660,
    make_iso_hybrid,
    make_raw_fat,
    make_raw_gpt,
    make_raw_mbr,
    make_raw_random,
    make_raw_zeros,
    make_udf,
    make_udf_hd,
)
from support.formats.microsoft import (
    make_vdi_bad_header_size,
    make_vdi_differencing,
    make_vdi_dynamic,
    make_vdi_fixed,
    make_vdi_truncated,
    make_vhd_bad_checksum,
    make_vhd_differencing,
    make_vhd_dynamic,
    make_vhd_fixed,
    make_vhd_fixed_partitioned,
    make_vhdx_dynamic,
    make_vhdx_fixed,
    make_vhdx_no_headers,
)
from support.formats.other import (
    make_bochs,
    make_dmg,
    make_elf,
    make_empty,
    make_gzip,
    make_iso_truncated,
    make_parallels,
    make_tar,
    make_text,
    make_zip,
)
from support.formats.qcow2 import (
    make_luks,
    make_qcow1,
    make_qcow2_absurd_size,
    make_qcow2_aes,
    make_qcow2_backing,
    make_qcow2_backing_json,
    make_qcow2_bad_cluster_bits,
    make_qcow2_bitmap,
    make_qcow2_boot_signature,
    make_qcow2_compressed,
    make_qcow2_corrupt,
    make_qcow2_data_file,
    make_qcow2_dirty,
    make_qcow2_extended_l2,
    make_qcow2_extension_overrun,
    make_qcow2_in_iso,
    make_qcow2_l1_past_end,
    make_qcow2_luks,
    make_qcow2_snapshot,
    make_qcow2_too_large,
    make_qcow2_truncated_header,
    make_qcow2_unknown_feature,
    make_qcow2_v2,
    make_qcow2_v3,
    make_qcow2_version4,
    make_qcow2_with_mbr,
    make_qcow2_with_vhd_footer,
    make_qcow2_zero_size,
    make_qcow2_zstd,
    make_qed,
)
from support.formats.vmdk import (
    make_vmdk_cowd,
    make_vmdk_descriptor_abs_path,
    make_vmdk_embedded_other_file,
    make_vmdk_embedded_second_extent,
    make_vmdk_monolithic_flat,
    make_vmdk_newline_damaged,
    make_vmdk_parent,
    make_vmdk_sparse,
    make_vmdk_stream,
    make_vmdk_stream_footer,
    make_vmdk_two_gb_sparse,
)
from virtlab.errors import CorruptImage, TooLarge, UnsafeImage, UnsupportedImage
from virtlab.images.formats import ImageFormat

__all__ = [
    "ACCEPTED",
    "CAP",
    "DISK_SIZE",
    "PATTERN",
    "PATTERN_OFFSETS",
    "REFUSED",
    "Accepted",
    "Maker",
    "Refused",
    "misleading_name",
]

Q, V, I = ImageFormat.QCOW2, ImageFormat.VMDK, ImageFormat.ISO  # noqa: E741


ACCEPTED: dict[str, Accepted] = {
    "qcow2_v2": Accepted(make_qcow2_v2, Q, "v2"),
    "qcow2_v3": Accepted(make_qcow2_v3, Q, "v3"),
    "qcow2_compressed": Accepted(make_qcow2_compressed, Q, "v3"),
    "qcow2_zstd": Accepted(make_qcow2_zstd, Q, "v3"),
    "qcow2_extended_l2": Accepted(make_qcow2_extended_l2, Q, "v3"),
    "qcow2_snapshot": Accepted(make_qcow2_snapshot, Q, "v3"),
    "qcow2_bitmap": Accepted(make_qcow2_bitmap, Q, "v3"),
    "qcow2_dirty": Accepted(make_qcow2_dirty, Q, "v3"),
    "vmdk_sparse": Accepted(make_vmdk_sparse, V, "monolithicSparse"),
    "vmdk_stream": Accepted(make_vmdk_stream, V, "streamOptimized"),
    "vmdk_stream_footer": Accepted(make_vmdk_stream_footer, V, "streamOptimized"),
    "vdi_dynamic": Accepted(make_vdi_dynamic, ImageFormat.VDI, "dynamic"),
    "vdi_fixed": Accepted(make_vdi_fixed, ImageFormat.VDI, "fixed"),
    "vhdx_dynamic": Accepted(make_vhdx_dynamic, ImageFormat.VHDX, "dynamic"),
    "vhdx_fixed": Accepted(make_vhdx_fixed, ImageFormat.VHDX, "fixed"),
    "vhd_dynamic": Accepted(make_vhd_dynamic, ImageFormat.VHD, "dynamic"),
    "vhd_fixed": Accepted(make_vhd_fixed, ImageFormat.VHD, "fixed"),
    "vhd_fixed_partitioned": Accepted(make_vhd_fixed_partitioned, ImageFormat.VHD, "fixed"),
    "raw_plain": Accepted(make_pattern_raw, ImageFormat.RAW, "plain"),
    "raw_zeros": Accepted(make_raw_zeros, ImageFormat.RAW, "plain"),
    "raw_random": Accepted(make_raw_random, ImageFormat.RAW, "plain"),
    "raw_fat": Accepted(make_raw_fat, ImageFormat.RAW, "plain"),
    "raw_mbr": Accepted(make_raw_mbr, ImageFormat.RAW, "mbr"),
    "raw_gpt": Accepted(make_raw_gpt, ImageFormat.RAW, "gpt"),
    "iso9660": Accepted(make_iso9660, I, "iso9660"),
    "iso_hybrid": Accepted(make_iso_hybrid, I, "iso9660"),
    "udf": Accepted(make_udf, I, "udf"),
    "udf_hd": Accepted(make_udf_hd, I, "udf"),
}


OUTSIDE = "refusing to read files outside the upload"


SEVERAL = "matches more than one format"


REFUSED: dict[str, Refused] = {
    "qcow2_backing": Refused(make_qcow2_backing, UnsafeImage, "with a backing file ('base.img')"),
    "qcow2_backing_json": Refused(make_qcow2_backing_json, UnsafeImage, "json:"),
    "qcow2_data_file": Refused(make_qcow2_data_file, UnsafeImage, "external data file"),
    "qcow2_luks": Refused(make_qcow2_luks, UnsafeImage, "encrypted with LUKS"),
    "qcow2_aes": Refused(make_qcow2_aes, UnsafeImage, "encrypted with AES"),
    "luks": Refused(make_luks, UnsafeImage, "LUKS container"),
    "qcow2_corrupt": Refused(make_qcow2_corrupt, CorruptImage, "marked corrupt"),
    "qcow2_unknown_feature": Refused(
        make_qcow2_unknown_feature, UnsafeImage, "incompatible features virtlab does not know"
    ),
    "qcow2_version4": Refused(make_qcow2_version4, UnsupportedImage, "(version 4)"),
    "qcow1": Refused(make_qcow1, UnsupportedImage, "qcow image (version 1)"),
    "qed": Refused(make_qed, UnsupportedImage, "QED image"),
    "qcow2_too_large": Refused(
        make_qcow2_too_large, TooLarge, "virtual size of 3.0 TiB, past the limit of 2.0 TiB"
    ),
    "qcow2_zero_size": Refused(make_qcow2_zero_size, CorruptImage, "virtual size of zero"),
    "qcow2_absurd_size": Refused(make_qcow2_absurd_size, CorruptImage, "impossible virtual size"),
    "qcow2_truncated_header": Refused(make_qcow2_truncated_header, CorruptImage, "cut short"),
    "qcow2_l1_past_end": Refused(make_qcow2_l1_past_end, CorruptImage, "L1 table lies past"),
    "qcow2_bad_cluster_bits": Refused(
        make_qcow2_bad_cluster_bits, CorruptImage, "impossible cluster size"
    ),
    "qcow2_extension_overrun": Refused(
        make_qcow2_extension_overrun, CorruptImage, "runs past its first cluster"
    ),
    "qcow2_with_mbr": Refused(make_qcow2_with_mbr, UnsafeImage, f"{SEVERAL} (qcow2 and mbr)"),
    "qcow2_boot_signature": Refused(
        make_qcow2_boot_signature, UnsafeImage, f"{SEVERAL} (gpt and qcow2, says a second"
    ),
    "qcow2_in_iso": Refused(make_qcow2_in_iso, UnsafeImage, f"{SEVERAL} (qcow2 and iso)"),
    "qcow2_with_vhd_footer": Refused(
        make_qcow2_with_vhd_footer, UnsafeImage, f"{SEVERAL} (qcow2 and vhd)"
    ),
    "vmdk_monolithic_flat": Refused(
        make_vmdk_monolithic_flat,
        UnsafeImage,
        f"is a VMDK (monolithicFlat) whose extent is a separate file; {OUTSIDE}",
    ),
    "vmdk_two_gb_sparse": Refused(
        make_vmdk_two_gb_sparse, UnsafeImage, "is a VMDK (twoGbMaxExtentSparse) whose extent"
    ),
    "vmdk_descriptor_abs_path": Refused(
        make_vmdk_descriptor_abs_path, UnsafeImage, "other files are ('/etc/passwd')"
    ),
    "vmdk_embedded_other_file": Refused(
        make_vmdk_embedded_other_file, UnsafeImage, "other files are ('other.raw')"
    ),
    "vmdk_embedded_second_extent": Refused(
        make_vmdk_embedded_second_extent, UnsafeImage, "extents are separate files"
    ),
    "vmdk_parent": Refused(make_vmdk_parent, UnsafeImage, "with a parent disk ('base.vmdk')"),
    "vmdk_newline_damaged": Refused(make_vmdk_newline_damaged, CorruptImage, "newline check"),
    "vmdk_cowd": Refused(make_vmdk_cowd, UnsupportedImage, "COWD"),
    "vdi_bad_header_size": Refused(make_vdi_bad_header_size, CorruptImage, "header sizes"),
    "vdi_differencing": Refused(make_vdi_differencing, UnsafeImage, "a VDI (differencing)"),
    "vdi_truncated": Refused(make_vdi_truncated, CorruptImage, "fewer blocks"),
    "vhdx_no_headers": Refused(make_vhdx_no_headers, CorruptImage, "missing its headers"),
    "vhd_bad_checksum": Refused(make_vhd_bad_checksum, CorruptImage, "footer checksum is wrong"),
    "vhd_differencing": Refused(
        make_vhd_differencing, UnsafeImage, "with a parent disk ('base.vhd')"
    ),
    "iso_truncated": Refused(make_iso_truncated, CorruptImage, "cut short"),
    "empty": Refused(make_empty, UnsupportedImage, "is empty"),
    "zip": Refused(make_zip, UnsupportedImage, "is a ZIP archive"),
    "tar": Refused(make_tar, UnsupportedImage, "is a tar archive"),
    "gzip": Refused(make_gzip, UnsupportedImage, "is gzip-compressed data"),
    "elf": Refused(make_elf, UnsupportedImage, "is an ELF executable"),
    "text": Refused(make_text, UnsupportedImage, "is a text file"),
    "parallels": Refused(make_parallels, UnsupportedImage, "is a Parallels disk image"),
    "dmg": Refused(make_dmg, UnsupportedImage, "Apple disk image (DMG)"),
    "bochs": Refused(make_bochs, UnsupportedImage, "is a Bochs disk image"),
}


# A name suggesting some other format, for each format (content must win over the name).
_MISLEADING = {
    ImageFormat.QCOW2: "router.vmdk",
    ImageFormat.VMDK: "router.qcow2",
    ImageFormat.VDI: "router.vhd",
    ImageFormat.VHDX: "router.vdi",
    ImageFormat.VHD: "router.vhdx",
    ImageFormat.RAW: "router.iso",
    ImageFormat.ISO: "router.qcow2",
}


__all__ += sorted(name for name in list(globals()) if name.startswith("make_"))


def misleading_name(case: str) -> str:
    """A file name for ``case`` that names a format its content is not."""
    if case in ACCEPTED:
        return _MISLEADING[ACCEPTED[case].format]
    return "router.vmdk" if case.startswith("qcow") else "router.qcow2"


def make_disguised(case: str, directory: Path) -> Path:
    """Make the ACCEPTED or REFUSED ``case`` under a misleading name (e.g. a VMDK as
    ``router.qcow2``)."""
    maker = ACCEPTED[case].maker if case in ACCEPTED else REFUSED[case].maker
    return maker(directory, misleading_name(case))
