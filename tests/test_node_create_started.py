"""A node created started (``POST /api/nodes`` with ``start``): one request gives a running
node, a real QEMU guest (TCG) booting the tiny test disk; a start that fails makes nothing.
(``virtlab node create --start`` sends it: tests/test_api_nodes.py drives the CLI.)"""

from __future__ import annotations

import asyncio
import sqlite3

import httpx
from websockets.asyncio.client import connect

from support.server import Server
from virtlab.devtools.bootdisk import BOOT_MARKER


def _node_dirs(server: Server) -> list[str]:
    return sorted(p.name for p in (server.data_dir / "nodes").iterdir())


def _host_memory_mb() -> int:
    with open("/proc/meminfo") as meminfo:
        return next(int(line.split()[1]) // 1024 for line in meminfo if line.startswith("MemTotal"))


def _rows(server: Server) -> list[tuple[str, str]]:
    with sqlite3.connect(server.data_dir / "catalog.sqlite3", timeout=30) as db:
        return sorted(db.execute("SELECT name, state FROM nodes"))


async def _serial_until_marker(server: Server, node: dict) -> bytes:
    url = server.url.replace("http", "ws", 1) + node["consoles"]["serial"]["ws"]
    seen = b""
    async with connect(url, additional_headers=server.headers) as ws:
        while BOOT_MARKER.encode() not in seen:
            seen += await asyncio.wait_for(ws.recv(), 120)
    return seen


def test_a_node_created_started_runs_and_boots(booted_server: tuple[Server, str]) -> None:
    server, image = booted_server
    with server.client(timeout=120) as client:
        reply = client.post(
            "/api/nodes", json={"name": "s1", "image": image, "ram_mb": 128, "start": True}
        )
        assert reply.status_code == 201, reply.text
        node = reply.json()
        assert node["state"] == "running" and node["detail"] == ""
        assert ("s1", "running") in _rows(server)
        seen = asyncio.run(_serial_until_marker(server, node))
        assert seen.startswith(b"\r\nSYSLINUX"), seen[:80]  # from its first byte
        assert client.post("/api/nodes/s1/kill").json()["state"] == "stopped"
        assert client.delete("/api/nodes/s1").status_code == 204


def _refused(reply: httpx.Response, status: int, *words: str) -> None:
    assert reply.status_code == status, reply.text
    for word in words:
        assert word in reply.json()["detail"], reply.text


def test_a_start_that_fails_at_creation_makes_nothing(booted_server: tuple[Server, str]) -> None:
    server, image = booted_server
    with server.client(timeout=120) as client:
        rows, dirs = _rows(server), _node_dirs(server)
        # RAM the host cannot hold beside the 1024 MiB it keeps (VIRTLAB_MEMORY_RESERVE_MB),
        # though placement finds room for it: refused before anything is made.
        ram = _host_memory_mb() - 512
        big = {"name": "big", "image": image, "ram_mb": ram}
        reply = client.post("/api/nodes", json=big | {"start": True})
        _refused(reply, 409, f"cannot start node big ({ram} MiB)", "VIRTLAB_MEMORY_OVERCOMMIT")
        # QEMU exits at once (a USB keyboard without a USB bus): the node is removed again.
        reply = client.post(
            "/api/nodes",
            json={"name": "bad", "image": image, "ram_mb": 128, "start": True,
                  "extra_args": ["-device", "usb-kbd"]},
        )  # fmt: skip
        _refused(reply, 500, "QEMU for node bad exited", "usb")
        for name in ("big", "bad"):
            assert client.get(f"/api/nodes/{name}").status_code == 404
        assert (_rows(server), _node_dirs(server)) == (rows, dirs)
        # Without start the same settings make a stopped node: the refusals were the start's.
        made = client.post("/api/nodes", json=big)
        assert made.status_code == 201 and made.json()["state"] == "stopped", made.text
        assert client.delete("/api/nodes/big").status_code == 204
