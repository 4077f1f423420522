"""CD-ROM nodes end to end: a real server, an uploaded ISO, a QEMU guest (TCG) booting from it.

A node made from an ISO gets a blank disk of its own (``disk_size_mb``) and the ISO as its
first boot device, as when installing an OS from a CD.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect

from support.bootiso import boot_iso
from support.qimg import info
from support.server import Server
from virtlab.devtools.bootdisk import BOOT_MARKER

MARKER = BOOT_MARKER.encode()
MiB = 1 << 20


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict]]:
    """A server with the boot ISO uploaded; every node's QEMU is killed at the end."""
    server = Server(tmp_path_factory.mktemp("data")).start()
    iso = boot_iso(tmp_path_factory)
    try:
        with server.client() as client:
            response = client.put("/api/images/boot.iso", content=iso.read_bytes())
        assert response.status_code == 201, response.text
        yield server, response.json()
    finally:
        server.kill_nodes()
        server.stop()


def _act(client: httpx.Client, node: str, action: str) -> dict:
    response = client.post(f"/api/nodes/{node}/{action}")
    assert response.status_code == 200, response.text
    return response.json()


async def _ws_until(ws, pattern: bytes, timeout: float = 120) -> re.Match[bytes]:  # type: ignore[no-untyped-def]
    seen = b""

    async def loop() -> re.Match[bytes]:
        nonlocal seen
        while not (found := re.search(pattern, seen)):
            seen += await ws.recv()
        return found

    try:
        return await asyncio.wait_for(loop(), timeout)
    except TimeoutError:
        raise AssertionError(f"no {pattern!r} on the serial console; saw {seen[-600:]!r}") from None


def test_the_iso_is_a_cdrom_image(lab: tuple[Server, dict]) -> None:
    _, image = lab
    assert (image["kind"], image["format"], image["source_format"]) == ("cdrom", "iso", "iso")
    assert image["name"].endswith(".iso")


def test_a_cdrom_node_needs_a_disk_size(lab: tuple[Server, dict]) -> None:
    server, image = lab
    with server.client() as client:
        refused = client.post(
            "/api/nodes", json={"name": "nodisk", "image": image["name"], "ram_mb": 128}
        )
        assert refused.status_code == 400, refused.text
        assert "disk_size_mb" in refused.json()["detail"]
        assert client.get("/api/nodes/nodisk").status_code == 404
    assert not list((server.data_dir / "nodes").glob("*/disk.qcow2"))


def test_a_cdrom_node_boots_from_the_cd_and_sees_its_blank_disk(lab: tuple[Server, dict]) -> None:
    server, image = lab
    with server.client() as client:
        response = client.post(
            "/api/nodes",
            json={"name": "inst1", "image": image["name"], "ram_mb": 128, "disk_size_mb": 64},
        )
        assert response.status_code == 201, response.text
        node = response.json()
        assert node["disk_size_mb"] == 64 and node["state"] == "stopped"
        disk = server.data_dir / "nodes" / node["id"] / "disk.qcow2"
        disk_info = info(disk)
        assert disk_info["format"] == "qcow2"
        assert disk_info["virtual-size"] == 64 * MiB
        assert "backing-filename" not in disk_info, "a blank disk, not an overlay over the ISO"
        assert _act(client, "inst1", "start")["state"] == "running"

    ws_url = server.url.replace("http", "ws") + node["consoles"]["serial"]["ws"]

    async def console() -> tuple[bytes, bytes]:
        async with connect(ws_url, additional_headers=server.headers) as ws:
            await _ws_until(ws, MARKER)  # booted: only the CD-ROM holds a kernel
            await ws.send("echo $((6*7))\r")
            await _ws_until(ws, rb"\b42\b")
            # The markers are typed split by quotes, so only the command's output matches.
            await ws.send("echo __BL''K__$(ls /sys/block | tr '\\n' ' ')__\r")
            blocks = await _ws_until(ws, rb"__BLK__([^_\r\n]*)__")
            await ws.send("echo __S''Z__$(cat /sys/block/vda/size)__\r")
            size = await _ws_until(ws, rb"__SZ__(\d+)__")
            return blocks.group(1), size.group(1)

    blocks, sectors = asyncio.run(console())
    assert "vda" in blocks.decode().split(), blocks  # virtio-blk, the default disk bus
    assert int(sectors) == 64 * MiB // 512 == 131072

    with server.client() as client:
        in_use = client.delete(f"/api/images/{image['name']}")
        assert in_use.status_code == 409, in_use.text
        assert "inst1" in in_use.json()["detail"]
        assert _act(client, "inst1", "kill")["state"] == "stopped"
        assert client.delete("/api/nodes/inst1").status_code == 204
        assert not disk.parent.exists()


def test_an_iso_in_use_by_a_stopped_node_cannot_be_deleted(
    lab: tuple[Server, dict], tmp_path_factory: pytest.TempPathFactory
) -> None:
    server, image = lab
    with server.client() as client:
        uploaded = client.put(
            "/api/images/other.iso", content=boot_iso(tmp_path_factory).read_bytes()
        )
        assert uploaded.status_code == 201, uploaded.text
        name = uploaded.json()["name"]
        assert name != image["name"], "an image of its own: the module's ISO stays"
        created = client.post(
            "/api/nodes", json={"name": "inst2", "image": name, "ram_mb": 128, "disk_size_mb": 8}
        )
        assert created.status_code == 201, created.text
        in_use = client.delete(f"/api/images/{name}")
        assert in_use.status_code == 409 and "inst2" in in_use.json()["detail"], in_use.text
        assert client.delete("/api/nodes/inst2").status_code == 204
        assert client.delete(f"/api/images/{name}").status_code == 204
        assert client.get(f"/api/images/{name}").status_code == 404
