"""The tiny bootable disk, imported in every format a user might have it in.

Each import must come out as a qcow2 with the same guest-visible content as the original, and
the result must still boot.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from support.archives import make_ova
from support.bootdisk import boot_disk
from support.guest import Guest
from support.qimg import compare, convert
from support.server import Server
from virtlab.devtools.bootdisk import BOOT_MARKER


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return boot_disk(tmp_path_factory)


def _as_raw(src: Path, d: Path) -> Path:
    return Path(shutil.copy(src, d / "boot.img"))


def _as_gzip(src: Path, d: Path) -> Path:
    out = d / "boot.img.gz"
    out.write_bytes(gzip.compress(src.read_bytes(), compresslevel=1))
    return out


def _as_ova(src: Path, d: Path) -> Path:
    vmdk = convert(src, d / "boot-disk1.vmdk", "vmdk", "subformat=streamOptimized")
    return make_ova(d / "boot.ova", {"boot-disk1.vmdk": vmdk})


MAKERS = {
    "raw": (_as_raw, "raw", []),
    "vmdk": (lambda s, d: convert(s, d / "boot.vmdk", "vmdk"), "vmdk", []),
    "vdi": (lambda s, d: convert(s, d / "boot.vdi", "vdi"), "vdi", []),
    "vhdx": (lambda s, d: convert(s, d / "boot.vhdx", "vhdx"), "vhdx", []),
    "vhd": (lambda s, d: convert(s, d / "boot.vhd", "vpc"), "vhd", []),
    "gzip": (_as_gzip, "raw", ["gzip"]),
    "ova": (_as_ova, "vmdk", ["ova"]),
}


@pytest.mark.parametrize("shape", MAKERS)
def test_every_shape_imports_to_the_same_content(
    server: Server, original: Path, tmp_path: Path, shape: str
) -> None:
    make, source_format, wrappers = MAKERS[shape]
    upload = make(original, tmp_path)
    with server.client() as client, upload.open("rb") as f:
        response = client.post("/api/images/custom", files={"image": (upload.name, f)})
    assert response.status_code == 201, response.text
    record = response.json()
    assert (record["format"], record["source_format"]) == ("qcow2", source_format)
    assert record["wrappers"] == wrappers
    stored = server.data_dir / "images" / record["path"]
    assert compare(original, "raw", stored, "qcow2")


def test_an_imported_disk_boots(server: Server, original: Path, tmp_path: Path) -> None:
    vmdk = convert(original, tmp_path / "router.qcow2", "vmdk")  # disguised, as in the bug
    with server.client() as client, vmdk.open("rb") as f:
        record = client.post("/api/images/custom", files={"image": (vmdk.name, f)}).json()
    stored = server.data_dir / "images" / record["path"]
    drive = f"file={stored},format=qcow2,if=virtio,snapshot=on"
    with Guest.start(stored, bus="none", extra_args=["-drive", drive]) as guest:
        guest.wait_for(BOOT_MARKER, timeout=120)
        assert guest.run("echo $((6*7))") == "42"
