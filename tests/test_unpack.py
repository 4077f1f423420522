"""Peeling compression and OVA wrappers: by content, with caps, refusing hostile archives."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from support.archives import make_ova, ovf_descriptor
from virtlab.errors import CorruptImage, TooLarge, UnsupportedImage
from virtlab.images.unpack import sniff_wrapper, unwrap

MiB = 1 << 20
PATTERN = os.urandom(MiB) + b"\0" * MiB  # 2 MiB: half random, half zeros


def _compress(kind: str, data: bytes) -> bytes:
    return {
        "gzip": gzip.compress,
        "xz": lzma.compress,
        "bzip2": bz2.compress,
        "zstd": zstandard.ZstdCompressor().compress,
    }[kind](data)


@pytest.mark.parametrize("kind", ["gzip", "xz", "bzip2", "zstd"])
def test_each_compression_is_recognised_by_content_and_undone(tmp_path: Path, kind: str) -> None:
    src = tmp_path / "router.qcow2"  # the name lies: content decides
    src.write_bytes(_compress(kind, PATTERN))
    assert sniff_wrapper(src) == kind
    [payload] = unwrap(src, label="router.qcow2", workdir=tmp_path, max_expanded=64 * MiB)
    assert payload.path.read_bytes() == PATTERN
    assert payload.wrappers == (kind,)
    assert not src.exists(), "the wrapped file is consumed"


def test_the_debian_tools_output_is_read_too(tmp_path: Path) -> None:
    """Files made by the command-line tools users have, not only by Python's modules."""
    raw = tmp_path / "disk.img"
    raw.write_bytes(PATTERN)
    for tool, suffix, kind in (
        ("gzip", ".gz", "gzip"), ("xz", ".xz", "xz"), ("bzip2", ".bz2", "bzip2"),
        ("zstd", ".zst", "zstd"),
    ):  # fmt: skip
        packed = tmp_path / f"disk{suffix}"
        with packed.open("wb") as out:
            subprocess.run([tool, "-c", str(raw)], stdout=out, check=True)
        work = tmp_path / kind
        work.mkdir()
        [payload] = unwrap(packed, label=packed.name, workdir=work, max_expanded=64 * MiB)
        assert payload.path.read_bytes() == PATTERN, tool


def test_nested_wrappers_are_all_peeled(tmp_path: Path) -> None:
    src = tmp_path / "x"
    src.write_bytes(gzip.compress(lzma.compress(PATTERN)))
    [payload] = unwrap(src, label="x", workdir=tmp_path, max_expanded=64 * MiB)
    assert payload.wrappers == ("gzip", "xz")
    assert payload.path.read_bytes() == PATTERN


def test_concatenated_streams_decompress_whole(tmp_path: Path) -> None:
    src = tmp_path / "x.gz"
    src.write_bytes(gzip.compress(b"a" * MiB) + gzip.compress(b"b" * MiB))
    [payload] = unwrap(src, label="x.gz", workdir=tmp_path, max_expanded=64 * MiB)
    assert payload.path.read_bytes() == b"a" * MiB + b"b" * MiB


def _bomb(kind: str, expands_to: int) -> bytes:
    """Concatenated streams of 64 MiB of zeros: a few hundred KB that expand to ``expands_to``."""
    block = _compress(kind, b"\0" * (64 * MiB))
    return block * (expands_to // (64 * MiB))


@pytest.mark.parametrize(
    ("kind", "expands_to"), [("xz", 4 << 30), ("gzip", 4 << 30), ("zstd", 64 << 30)]
)
def test_a_bomb_is_stopped_as_soon_as_the_cap_is_passed(
    tmp_path: Path, kind: str, expands_to: int
) -> None:
    src = tmp_path / "bomb"
    src.write_bytes(_bomb(kind, expands_to))  # the xz one: ~600 KB that expand to 4 GiB
    assert src.stat().st_size < 8 * MiB
    seen: list[int] = []
    with pytest.raises(TooLarge, match=r"bomb expands past the limit of 128\.0 MiB"):
        unwrap(src, label="bomb", workdir=tmp_path, max_expanded=128 * MiB,
               on_progress=seen.append)  # fmt: skip
    # Stopped early: far less than the whole input was read, and nothing big is left behind.
    assert max(seen) < src.stat().st_size // 4
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) < 140 * MiB


def test_a_truncated_stream_is_refused_as_damaged(tmp_path: Path) -> None:
    data = lzma.compress(PATTERN)
    src = tmp_path / "cut.xz"
    src.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptImage, match=r"cut\.xz is xz-compressed but .* damaged or cut short"):
        unwrap(src, label="cut.xz", workdir=tmp_path, max_expanded=64 * MiB)


def test_too_deep_nesting_is_refused(tmp_path: Path) -> None:
    data = PATTERN
    for _ in range(4):
        data = gzip.compress(data)
    src = tmp_path / "deep.gz"
    src.write_bytes(data)
    with pytest.raises(UnsupportedImage, match="wrapped more than 3 levels deep"):
        unwrap(src, label="deep.gz", workdir=tmp_path, max_expanded=64 * MiB)


def test_an_ova_yields_the_disks_its_descriptor_names(tmp_path: Path) -> None:
    ova = make_ova(tmp_path / "appliance.ova", {"disk1.vmdk": b"ONE" * 1000, "disk2.vmdk": b"TWO"})
    payloads = unwrap(ova, label="appliance.ova", workdir=tmp_path, max_expanded=64 * MiB)
    assert [p.label for p in payloads] == ["appliance.ova: disk1.vmdk", "appliance.ova: disk2.vmdk"]
    assert [p.path.read_bytes() for p in payloads] == [b"ONE" * 1000, b"TWO"]
    assert all(p.wrappers == ("ova",) for p in payloads)


def test_a_gzipped_ova_is_peeled_twice(tmp_path: Path) -> None:
    ova = make_ova(tmp_path / "a.ova", {"d.vmdk": PATTERN})
    gz = tmp_path / "a.ova.gz"
    gz.write_bytes(gzip.compress(ova.read_bytes()))
    [payload] = unwrap(gz, label="a.ova.gz", workdir=tmp_path, max_expanded=64 * MiB)
    assert payload.wrappers == ("gzip", "ova")
    assert payload.path.read_bytes() == PATTERN


def _tar(path: Path, members: list[tarfile.TarInfo], payloads: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info in members:
            data = payloads.get(info.name)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    return info


@pytest.mark.parametrize(
    ("disk_name", "kind", "message"),
    [
        ("../evil.vmdk", tarfile.REGTYPE, "not a plain file name"),
        ("sub/disk.vmdk", tarfile.REGTYPE, "not a plain file name"),
        ("/etc/disk.vmdk", tarfile.REGTYPE, "not a plain file name"),
        ("disk.vmdk", tarfile.SYMTYPE, "not a regular file"),
        ("disk.vmdk", tarfile.CHRTYPE, "not a regular file"),
    ],
)
def test_hostile_ova_members_are_refused_and_nothing_is_written_outside(
    tmp_path: Path, disk_name: str, kind: bytes, message: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    ovf = ovf_descriptor([disk_name])
    data = b"x" * 512
    members = [_member("a.ovf", ovf), _member(disk_name, data, kind)]
    ova = _tar(tmp_path / "a.ova", members, {"a.ovf": ovf, disk_name: data})
    with pytest.raises(CorruptImage, match=message):
        unwrap(ova, label="a.ova", workdir=work, max_expanded=64 * MiB)
    assert not (tmp_path / "evil.vmdk").exists()
    assert sorted(p.name for p in work.iterdir()) == []


def test_an_ova_whose_descriptor_names_a_missing_disk_is_refused(tmp_path: Path) -> None:
    ovf = ovf_descriptor(["gone.vmdk"])
    ova = _tar(tmp_path / "a.ova", [_member("a.ovf", ovf)], {"a.ovf": ovf})
    with pytest.raises(
        CorruptImage, match=r"names the disk 'gone\.vmdk', which the archive does not"
    ):
        unwrap(ova, label="a.ova", workdir=tmp_path, max_expanded=64 * MiB)


def test_a_tar_without_descriptor_is_not_an_ova(tmp_path: Path) -> None:
    tar = _tar(tmp_path / "x.ova", [_member("disk.vmdk", b"abc")], {"disk.vmdk": b"abc"})
    with pytest.raises(UnsupportedImage, match="tar archive without an OVF descriptor"):
        unwrap(tar, label="x.ova", workdir=tmp_path, max_expanded=64 * MiB)


def test_an_ovf_with_entities_is_refused(tmp_path: Path) -> None:
    ovf = b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]><Envelope/>'
    ova = _tar(tmp_path / "a.ova", [_member("a.ovf", ovf)], {"a.ovf": ovf})
    with pytest.raises(CorruptImage, match="DTD or entities"):
        unwrap(ova, label="a.ova", workdir=tmp_path, max_expanded=64 * MiB)


def test_an_ova_larger_than_the_cap_is_refused(tmp_path: Path) -> None:
    ova = make_ova(tmp_path / "a.ova", {"d.vmdk": b"\0" * (3 * MiB)})
    with pytest.raises(TooLarge):
        unwrap(ova, label="a.ova", workdir=tmp_path, max_expanded=2 * MiB)


def test_damaged_deflate_data_behind_a_valid_gzip_header_is_refused(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(PATTERN))
    data[40:60] = b"\xff" * 20  # inside the deflate stream, past the header
    src = tmp_path / "bad.gz"
    src.write_bytes(bytes(data))
    with pytest.raises(CorruptImage, match=r"bad\.gz is gzip-compressed but .* damaged"):
        unwrap(src, label="bad.gz", workdir=tmp_path, max_expanded=64 * MiB)
