"""The data directory's disk filling up: a clear error, nothing registered, nothing else lost.

The data directory is a small tmpfs mounted by the test (root is needed to mount; CI runs as root).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.catalog import assert_consistent
from support.qimg import compare, convert, patterned_raw

MiB = 1 << 20

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_disk_full_while_converting(make_server, small_disk: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    raw = patterned_raw(tmp_path / "small.raw", 8, data_mib=2)
    big_raw = patterned_raw(tmp_path / "big.raw", 64, data_mib=22, seed=2)
    big = convert(big_raw, tmp_path / "big.vmdk", "vmdk")  # ~22 MiB: fits once, not twice
    srv = make_server(data_dir=small_disk)
    with srv.client() as client:
        kept = client.put("/api/images/kept.raw", content=raw.read_bytes())
        assert kept.status_code == 201, kept.text
        response = client.put("/api/images/big.vmdk", content=big.read_bytes())
        assert response.status_code == 507, response.text
        detail = response.json()["detail"]
        assert "big.vmdk" in detail and "disk is full" in detail and "free some space" in detail
        names = [i["name"] for i in client.get("/api/images").json()]
        assert names == [kept.json()["name"]]
    srv.stop()
    assert_consistent(small_disk)
    assert compare(raw, "raw", small_disk / "images" / kept.json()["path"], "qcow2")


def test_disk_full_while_receiving(make_server, small_disk: Path) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(data_dir=small_disk)
    with srv.client() as client:
        try:
            response = client.put(
                "/api/images/huge.img",
                params={"import_id": "fills-the-disk"},
                content=b"\7" * (64 * MiB),
            )
            assert response.status_code == 507, response.text
        except httpx.HTTPError:
            pass  # the server answered and closed while we were still sending
        job = client.get("/api/imports/fills-the-disk").json()
    assert job["state"] == "failed"
    assert "filled up while receiving huge.img" in job["error"]
    srv.stop()
    assert_consistent(small_disk)
