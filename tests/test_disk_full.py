"""The data directory's disk filling up: a clear error, nothing registered, nothing else lost;
a guest that fills it by writing its disk is paused, said so, and resumes once there is room.

The data directory is a small tmpfs mounted by the test (root is needed to mount; CI runs as root).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.bootdisk import boot_disk
from support.catalog import assert_consistent
from support.console import SerialShell
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


@pytest.fixture
def roomy_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs that holds the boot image's import and a node, and little more."""
    mount = tmp_path / "room"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(mount: Path, leave: int) -> Path:
    """A file taking all but ``leave`` bytes of the file system's free space."""
    filler = mount / f"filler-{len(list(mount.glob('filler-*')))}"
    free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
    with filler.open("wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(free - leave, 1))
    return filler


def _wait_node(client: httpx.Client, node: str, predicate, timeout: float = 180) -> dict:  # type: ignore[no-untyped-def]
    """Read the node until ``predicate`` holds (the state change we wait for)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = client.get(f"/api/nodes/{node}").json()
        assert "state" in record, record
        if predicate(record):
            return record
    raise AssertionError(f"node {node} never reached the awaited state: {record}")


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def test_disk_full_under_a_running_guest_pauses_it_and_resume_goes_on(  # type: ignore[no-untyped-def]
    make_server, roomy_disk: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The guest writes its disk until DATA is full: QEMU pauses it (werror=enospc), the node
    says so, nothing else is lost, a node made, wiped or saved then is refused with 507 and
    leaves nothing half-made, and once space is freed a resume lets the write finish."""
    srv = make_server(data_dir=roomy_disk)
    try:
        with srv.client() as client:
            raw = boot_disk(tmp_path_factory).read_bytes()
            image = client.put("/api/images/boot.img", content=raw).json()["name"]
            spare = client.post("/api/nodes", json={"name": "spare", "image": image})
            assert spare.status_code == 201, spare.text
            r1 = client.post("/api/nodes", json={"name": "r1", "image": image, "ram_mb": 128})
            assert r1.status_code == 201, r1.text
            assert client.post("/api/nodes/r1/start").status_code == 200
            images_before = client.get("/api/images").json()
        spare_dir = roomy_disk / "nodes" / spare.json()["id"]
        spare_disk = _files(spare_dir)

        async def fill_from_the_guest() -> SerialShell:
            shell = await SerialShell.open(srv, r1.json())
            await shell.wait_for(rb"# ", 60)
            # The overlay grows as the guest writes: 40 MiB of its 48 MiB disk, past DATA's room.
            await shell.ws.send("dd if=/dev/zero of=/dev/vda bs=1M count=40 conv=fsync; "
                                'echo "__D""D__" $?\r')  # fmt: skip
            return shell

        filler = _fill(roomy_disk, leave=8 << 20)
        loop = asyncio.new_event_loop()
        shell = loop.run_until_complete(fill_from_the_guest())
        with srv.client() as client:
            paused = _wait_node(client, "r1", lambda r: r["state"] == "suspended")
            assert paused["detail"] == (
                f"node r1 paused: its disk ran out of space in {roomy_disk}; free some space "
                "there, then resume it (`virtlab node resume r1`)"
            )

            # Nothing new can be written (the room the server gave back to record the pause is
            # taken too), and nothing half-made is left by trying.
            refill = _fill(roomy_disk, leave=0)
            made = client.post("/api/nodes", json={"name": "r9", "image": image})
            assert made.status_code == 507, made.text
            assert "disk is full" in made.json()["detail"]
            assert "free some space" in made.json()["detail"]
            wiped = client.post("/api/nodes/spare/wipe")
            assert wiped.status_code == 507, wiped.text
            assert "disk is full" in wiped.json()["detail"]
            saved = client.post("/api/nodes/r1/checkpoints", json={"tag": "full"})
            assert saved.status_code == 507, saved.text
            assert "disk is full" in saved.json()["detail"]
            assert client.get("/api/nodes/r1/checkpoints").json() == []

            # Everything else is as it was.
            names = sorted(n["name"] for n in client.get("/api/nodes").json())
            assert names == ["r1", "spare"]
            assert client.get("/api/images").json() == images_before
            assert client.get("/api/nodes/r1").json()["state"] == "suspended"
        assert {p.name for p in (roomy_disk / "nodes").iterdir()} == {
            spare.json()["id"],
            r1.json()["id"],
        }
        assert _files(spare_dir) == spare_disk, "the spare node's disk is untouched"

        filler.unlink()  # free some space, then resume
        refill.unlink()
        with srv.client() as client:
            resumed = client.post("/api/nodes/r1/resume")
            assert resumed.status_code == 200, resumed.text
        match = loop.run_until_complete(shell.wait_for(rb"__DD__ (\d+)", 180))
        assert match[1] == b"0", "the guest's write finished once there was room"
        with srv.client() as client:
            running = client.get("/api/nodes/r1").json()
            assert running["state"] == "running" and running["detail"] == ""
            assert client.post("/api/nodes/r1/kill").status_code == 200
        loop.run_until_complete(shell.close())
        loop.close()
    finally:
        srv.kill_nodes()
        srv.stop()
    assert_consistent(roomy_disk)
    assert compare(
        boot_disk(tmp_path_factory), "raw", roomy_disk / "images" / images_before[0]["path"],
        "qcow2",
    ), "the base image is intact"  # fmt: skip
