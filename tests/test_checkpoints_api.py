"""Checkpoints through the REST API and the CLI on real servers and guests: the refusals and
their reasons, progress events, a checkpoint QEMU cannot load (the node still boots), and
checkpoints that outlive a server restart, with the catalog made to agree with the disks."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from support.bootiso import boot_iso
from support.console import SerialShell
from support.server import Server
from virtlab.devtools.bootdisk import BOOT_MARKER

VIRTLAB = str(Path(sys.executable).with_name("virtlab"))
pytestmark = pytest.mark.timeout(900)


def cli(server: Server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [VIRTLAB, *args], capture_output=True, text=True, timeout=600,
        env={**os.environ, **server.cli_env, "COLUMNS": "200"},
    )  # fmt: skip


def lab_of(server: Server, image: str, lab: str, *names: str, start: bool = True) -> None:
    nodes = "".join(f"    {n}: {{}}\n" for n in names)
    text = (f"name: {lab}\ntopology:\n  defaults: {{image: {image}, ram_mb: 128, nics: 1, "
            f"vnc: false}}\n  nodes:\n{nodes}")  # fmt: skip
    with server.client(timeout=600) as client:
        made = client.post("/api/labs", json={"topology": text, "start": start})
        assert made.status_code == 201, made.text


def refused(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, detail


def state_of(client: httpx.Client, ref: str, wanted: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while (node := client.get(f"/api/nodes/{ref}").json())["state"] != wanted:
        assert time.monotonic() < deadline, node
        time.sleep(0.2)
    return node


async def type_on(server: Server, node: dict, command: str, *, boots: int) -> str:
    """Type on the node's console once its scrollback shows ``boots`` boot markers."""
    shell = await SerialShell.open(server, node, booted=False)
    try:
        for _ in range(boots):
            await shell.wait_for(BOOT_MARKER.encode(), 120)
        status, output = await shell.run(command)
        assert status == 0, output
        return output
    finally:
        await shell.close()


async def _collect(server: Server, act: Callable, until: Callable) -> list[dict]:
    """Events from ``/api/events`` while ``act()`` runs, until ``until(events)``."""
    seen: list[dict] = []
    async with connect(server.ws_url("/api/events"), additional_headers=server.headers) as ws:
        task = asyncio.create_task(asyncio.to_thread(act))

        async def loop() -> None:
            while not until(seen):
                seen.append(json.loads(await ws.recv()))

        await asyncio.wait_for(loop(), 300)
        await task
    return seen


def test_refusals_say_what_and_what_to_do(booted_server: tuple[Server, str]) -> None:
    server, image = booted_server
    lab_of(server, image, "ref", "n1", "n2", start=False)
    with server.client(timeout=600) as client:
        n1 = "/api/nodes/ref:n1"
        refused(client.post(f"{n1}/checkpoints", json={"tag": "base"}), 409,
                "cannot checkpoint node n1: it is stopped; start it first")  # fmt: skip
        assert client.post(f"{n1}/start").status_code == 200
        refused(client.post(f"{n1}/checkpoints", json={"tag": "1st"}), 400,
                "'1st' cannot name a checkpoint", "starting with a letter")  # fmt: skip

        taken = cli(server, "node", "checkpoint", "ref:n1", "base")
        assert taken.returncode == 0 and "n1: checkpoint base" in taken.stdout, taken.stderr
        refused(client.post(f"{n1}/checkpoints", json={"tag": "base"}), 409,
                "n1 already has a checkpoint named base")  # fmt: skip
        refused(client.post("/api/labs/ref/checkpoints", json={"tag": "all"}), 409,
                "cannot checkpoint lab ref: n2 is not running",
                "virtlab lab start ref")  # fmt: skip
        refused(client.post(f"{n1}/checkpoints/nope/resume"), 404,
                "node n1 has no checkpoint 'nope'", "virtlab node checkpoints n1")  # fmt: skip
        refused(client.post(f"{n1}/checkpoints/base/resume"), 409,
                "cannot resume node n1 from a checkpoint: n1 is running", "--force")  # fmt: skip

        assert client.post(f"{n1}/kill").status_code == 200
        refused(client.post(f"{n1}/wipe"), 409,
                "cannot wipe the disk of node n1: its checkpoints (base)",
                "virtlab node checkpoints rm n1 TAG")  # fmt: skip
        refused(client.patch(n1, json={"ram_mb": 192}), 409, "cannot change ram_mb of node n1")
        assert client.patch(n1, json={"position": {"x": 1, "y": 2}}).status_code == 200
        refused(client.delete(f"/api/images/{image}"), 409, "checkpoints of n1 (base)")

        listed = cli(server, "node", "checkpoints", "ref:n1")
        assert listed.returncode == 0 and "base" in listed.stdout and "128 MiB RAM" in listed.stdout
        gone = cli(server, "node", "checkpoints", "rm", "ref:n1", "base")  # stopped: qemu-img
        assert gone.returncode == 0, gone.stderr
        assert client.get(f"{n1}/checkpoints").json() == []
        assert client.post(f"{n1}/wipe").status_code == 200
        assert client.delete("/api/labs/ref").status_code == 204


def test_a_lab_checkpoint_reports_progress_and_belongs_to_the_lab(
    booted_server: tuple[Server, str],
) -> None:
    server, image = booted_server
    lab_of(server, image, "prog", "p1", "p2")

    def take() -> None:
        with server.client(timeout=600) as client:
            assert client.post("/api/labs/prog/checkpoints", json={"tag": "t"}).status_code == 201

    events = asyncio.run(_collect(
        server, take,
        lambda seen: any(e["kind"] == "checkpoint" and e["state"] == "saved" for e in seen),
    ))  # fmt: skip
    mine = [e for e in events if e["kind"] == "checkpoint" and e["lab"] == "prog"]
    states = [e["state"] for e in mine]
    assert states[0] == "saving" and states[-1] == "saved", states
    assert {"progress"} <= set(states)
    last = mine[-1]
    assert (last["done"], last["total"], last["node"], last["tag"]) == (2, 2, None, "t")
    assert 0 < last["written"] <= last["ram_bytes"] * 2, last

    with server.client(timeout=600) as client:
        refused(client.delete("/api/nodes/prog:p1/checkpoints/t"), 409,
                "part of lab prog's checkpoint t", "virtlab lab checkpoints rm prog t")  # fmt: skip
        parts = client.get("/api/nodes/prog:p1/checkpoints").json()
        assert [(c["tag"], c["lab_checkpoint"]) for c in parts] == [("t", True)]
        # A node added after the checkpoint: the lab's resume refuses rather than half-resume.
        extra = {"name": "p3", "image": image, "lab": "prog", "ram_mb": 128}
        assert client.post("/api/nodes", json=extra).status_code == 201
        refused(client.post("/api/labs/prog/checkpoints/t/resume", params={"force": "true"}),
                409, "does not cover p3")  # fmt: skip
        assert client.delete("/api/nodes/prog:p3").status_code == 204
        resumed = client.post("/api/labs/prog/checkpoints/t/resume", params={"force": "true"})
        assert resumed.status_code == 200 and resumed.json()["running"] == 2, resumed.text
        assert client.delete("/api/labs/prog").status_code == 204  # checkpoints go with it


def test_a_cdrom_node_is_saved_with_its_blank_disk_and_resumed(
    booted_server: tuple[Server, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The ISO (raw, read-only) holds no snapshot: the checkpoint is in the blank disk."""
    server, _ = booted_server
    with server.client(timeout=600) as client:
        iso = client.put("/api/images/boot.iso", content=boot_iso(tmp_path_factory).read_bytes())
        assert iso.status_code == 201, iso.text
        body = {"name": "cd1", "image": iso.json()["name"], "disk_size_mb": 64, "ram_mb": 128}
        node = client.post("/api/nodes", json=body).json()
        assert client.post("/api/nodes/cd1/start").status_code == 200
        write = "printf {} | dd of=/dev/vda 2>/dev/null && sync"
        asyncio.run(type_on(server, node, f"{write.format('BEFORE')} && FROM=iso", boots=1))
        assert client.post("/api/nodes/cd1/checkpoints", json={"tag": "t"}).status_code == 201
        asyncio.run(type_on(server, node, write.format("AFTER!"), boots=0))
        assert client.post("/api/nodes/cd1/kill").status_code == 200
        resumed = cli(server, "node", "start", "cd1", "--from", "t")
        assert resumed.returncode == 0, resumed.stderr
        assert "cd1: running (from checkpoint t)" in resumed.stdout
        read = "echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda bs=6 count=1 2>/dev/null"
        output = asyncio.run(type_on(server, node, f'{read}; echo " f=$FROM"', boots=0))
        assert "BEFORE f=iso" in output, output  # the disk is back at the checkpoint too
        refused(client.delete(f"/api/images/{iso.json()['name']}"), 409, "cd1")
        assert client.post("/api/nodes/cd1/kill").status_code == 200
        assert client.delete("/api/nodes/cd1").status_code == 204  # its checkpoints go with it
        assert client.delete(f"/api/images/{iso.json()['name']}").status_code == 204


def _catalog(server: Server) -> sqlite3.Connection:
    return sqlite3.connect(server.data_dir / "catalog.sqlite3", timeout=30)


def test_a_checkpoint_qemu_cannot_load_is_reported_and_the_node_still_boots(
    booted_server: tuple[Server, str],
) -> None:
    server, image = booted_server
    lab_of(server, image, "odd", "m1")
    with server.client(timeout=600) as client:
        node = client.get("/api/nodes/odd:m1").json()
        asyncio.run(type_on(server, node, "echo up", boots=1))
        assert client.post("/api/nodes/odd:m1/checkpoints", json={"tag": "t"}).status_code == 201
        assert client.post("/api/nodes/odd:m1/kill").status_code == 200
        # As if saved on another machine type (a q35 node, or another QEMU's i440fx):
        with _catalog(server) as db:
            db.execute("UPDATE checkpoints SET machine = 'pc-q35-7.2' WHERE node_id = ?",
                       (node["id"],))  # fmt: skip
        response = client.post("/api/nodes/odd:m1/checkpoints/t/resume")
        refused(response, 409, "node m1 cannot resume from checkpoint t",
                "on machine pc-q35-7.2", "Machine type received is 'pc-i440fx-7.2'",
                "virtlab node start m1")  # fmt: skip
        stopped = client.get("/api/nodes/odd:m1").json()
        assert stopped["state"] == "stopped" and "start failed" in stopped["detail"]
        assert client.post("/api/nodes/odd:m1/start").status_code == 200  # boots from its disk
        asyncio.run(type_on(server, node, "echo again", boots=2))  # a second boot
        client.post("/api/nodes/odd:m1/kill")
        assert client.delete("/api/labs/odd").status_code == 204


def test_checkpoints_outlive_a_server_restart(booted_server: tuple[Server, str]) -> None:
    """The module's server is stopped and started again over its data directory."""
    server, image = booted_server
    lab_of(server, image, "keep", "k1")
    with server.client(timeout=600) as client:
        node = client.get("/api/nodes/keep:k1").json()
        asyncio.run(type_on(server, node, "KEPT=across-restarts", boots=1))
        for tag in ("t1", "t2", "t3"):
            assert client.post("/api/labs/keep/checkpoints", json={"tag": tag}).status_code == 201
        assert client.post("/api/nodes/keep:k1/kill").status_code == 200
    # Behind the server's back: t2 leaves the disk, and a save that never finished is recorded.
    disk = server.data_dir / "nodes" / node["id"] / "disk.qcow2"
    subprocess.run(["qemu-img", "snapshot", "-d", "t2", str(disk)], check=True)
    with _catalog(server) as db:
        db.execute("UPDATE checkpoints SET state = 'saving' WHERE tag = 't3' AND node_id = ?",
                   (node["id"],))  # fmt: skip
    server.stop()

    server.start()
    with server.client(timeout=600) as client:
        kept = client.get("/api/labs/keep/checkpoints").json()
        assert [(c["tag"], c["state"]) for c in kept] == [("t1", "ready")]
        snapshots = json.loads(subprocess.run(
            ["qemu-img", "info", "--output=json", "-U", str(disk)], check=True,
            capture_output=True, text=True,
        ).stdout).get("snapshots", [])  # fmt: skip
        assert [s["name"] for s in snapshots] == ["t1"], "the half-saved t3 is out of the disk"
        done = cli(server, "lab", "resume", "keep", "t1")
        assert done.returncode == 0, done.stderr
        output = asyncio.run(type_on(server, node, 'echo "k=$KEPT"', boots=0))
        assert "k=across-restarts" in output
        assert client.post("/api/nodes/keep:k1/kill").status_code == 200
