"""The disks of nodes on libvirt hosts, through a real ``virtlab serve`` and a real libvirtd:
base volumes that follow image deletion (also on a host that was not answering), checkpoints
of remote nodes and of a lab mixing local and remote nodes, and lab archives that carry a
remote node's disk.

One libvirtd ``h1`` (plain TCP, ``tests/support/libvirt_hosts.py``), the server and its two
images are shared by the module; guests are the tiny test disk at 128 MB under TCG.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip(
    "libvirt", reason="libvirt-python is not installed: pip install -e '.[libvirt]'"
)

from support.bootdisk import boot_disk
from support.console import SerialShell
from support.hosts_server import (
    host_is,
    hosts_server,
    libvirt_hosts,
    make_node,
    needs_libvirtd,
    refused,
    watch,
)
from support.libvirt_hosts import LibvirtHost
from support.server import Server
from virtlab.hosts.connection import HostConnection
from virtlab.hosts.volumes import HostStorage

pytestmark = needs_libvirtd


@pytest.fixture(scope="module")
def h1() -> Iterator[LibvirtHost]:
    with libvirt_hosts("vhd-", "h1") as (host,):
        yield host


@pytest.fixture(scope="module")
def srv(h1: LibvirtHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A server with host h1 added and the boot disk imported (its image's name)."""
    with hosts_server(tmp_path_factory, [h1]) as (server, image):
        yield server, image


def _bases(host: LibvirtHost) -> set[str]:
    return {p.name for p in (host.folder("lib") / "virtlab").glob("base-*")}


# -- base volumes follow the catalog --------------------------------------------------------------


def test_deleting_an_image_deletes_its_base_on_hosts_even_one_that_was_not_answering(
    srv: tuple[Server, str], h1: LibvirtHost, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server, image = srv
    with server.client() as api:
        raw = boot_disk(tmp_path_factory, hostname="other").read_bytes()
        made = api.put("/api/images/other.img", content=raw)
        assert made.status_code == 201, made.text
        other = made.json()["name"]
        keep = make_node(api, image, "keep", host="h1")
        before = _bases(h1)
        assert len(before) == 2, "the boot image's base and its seal"
        node = make_node(api, other, "b1", host="h1")
        pushed = _bases(h1) - before
        assert len(pushed) == 2, "the base and its seal reached h1"

        detail = refused(api.delete(f"/api/images/{other}"), 409, "b1", "delete those first")
        assert "used by" in detail
        assert _bases(h1) >= pushed, "a refusal deletes nothing, on the host either"
        assert api.get(f"/api/images/{other}").status_code == 200

        assert api.delete(f"/api/nodes/{node['id']}").status_code == 204
        assert _bases(h1) >= pushed, "a node's deletion leaves the base (other nodes may come)"
        assert api.delete(f"/api/images/{other}").status_code == 204
        assert not _bases(h1) & pushed, "the image's base went from the host with it"

        # The same again, with h1 not answering when the image is deleted.
        again = api.put("/api/images/other.img", content=raw)
        assert again.status_code == 201, again.text
        other = again.json()["name"]
        node = make_node(api, other, "b2", host="h1")
        assert _bases(h1) >= pushed
        assert api.delete(f"/api/nodes/{node['id']}").status_code == 204
    watch(server, h1.stop_daemon, host_is("h1", "down"))
    with server.client() as api:
        assert api.delete(f"/api/images/{other}").status_code == 204, "deleted here all the same"
        assert api.get(f"/api/images/{other}").status_code == 404
        assert _bases(h1) >= pushed, "h1 did not answer: its volume is still there"
    watch(server, h1.start_daemon, host_is("h1", "up"))
    assert _bases(h1) == before, "swept when h1 answered again; the boot image's base stays"
    with server.client() as api:
        assert api.get("/api/hosts/h1").json()["reachable"]
        assert asyncio.run(_remove_every_base(h1)) == [], "not the base a disk is backed by"
        assert _bases(h1) == before
        assert api.delete(f"/api/nodes/{keep['id']}").status_code == 204


async def _remove_every_base(host: LibvirtHost) -> list[str]:
    conn = HostConnection("h1", host.uri)
    await conn.open()
    try:
        return await HostStorage(conn).remove_bases(lambda _sha: True)
    finally:
        await conn.close()


# -- checkpoints of nodes on a libvirt host -------------------------------------------------------


def _disk_snapshots(host: LibvirtHost, node: dict) -> list[str]:
    """The internal snapshots in a node's disk volume, as qemu-img reads the host's file."""
    disk = host.folder("lib") / "virtlab" / f"node-{node['id']}.qcow2"
    info = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(disk)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return sorted(s["name"] for s in json.loads(info.stdout).get("snapshots", []))


def _last_line(output: str) -> str:
    return [line.strip() for line in output.splitlines() if line.strip()][-1]


async def _shell_ok(shell: SerialShell, command: str) -> str:
    status, output = await shell.run(command, timeout=120)
    assert status == 0, (command, output)
    return output


def test_a_remote_node_is_checkpointed_resumed_and_its_checkpoints_deleted(
    srv: tuple[Server, str], h1: LibvirtHost
) -> None:
    """Saved by libvirt into its disk volume, resumed with what the guest had in memory and
    the console's scrollback of that moment; deleted running and stopped; refusals keep all."""
    server, image = srv
    with server.client() as api:
        node = make_node(api, image, "r1", host="h1")
        ref = f"/api/nodes/{node['id']}"
        assert api.post(f"{ref}/start").json()["state"] == "running"

    async def before() -> None:
        shell = await SerialShell.open(server, node)
        await _shell_ok(shell, "echo kept > /tmp/mark; echo SAVED-SCREEN")
        await shell.close()

    asyncio.run(before())
    with server.client() as api:
        saved = api.post(f"{ref}/checkpoints", json={"tag": "c1"})
        assert saved.status_code == 201, saved.text
        row = saved.json()
        assert row["state"] == "ready" and row["vm_state_size"] > 0, row
        assert row["machine"].startswith("pc-i440fx-") and row["accel"] == "tcg", row
        assert api.get(ref).json()["state"] == "running", "it runs on after the save"
        assert _disk_snapshots(h1, node) == ["c1"]
        refused(api.post(f"{ref}/checkpoints", json={"tag": "c1"}), 409, "already", "c1")
        refused(api.post(f"{ref}/checkpoints/c1/resume"), 409, "r1 is running", "--force")
        assert [c["tag"] for c in api.get(f"{ref}/checkpoints").json()] == ["c1"]
        assert api.post(f"{ref}/suspend").json()["state"] == "suspended"
        assert api.post(f"{ref}/checkpoints", json={"tag": "c2"}).status_code == 201
        assert api.get(ref).json()["state"] == "suspended", "a suspended node stays so"
        assert api.post(f"{ref}/resume").json()["state"] == "running"
        assert api.delete(f"{ref}/checkpoints/c2").status_code == 204  # while it runs
        assert _disk_snapshots(h1, node) == ["c1"]

    async def after() -> None:
        shell = await SerialShell.open(server, node, booted=False)
        await _shell_ok(shell, "echo spoiled > /tmp/mark; echo SPOILED-SCREEN")
        await shell.close()

    asyncio.run(after())
    with server.client() as api:
        resumed = api.post(f"{ref}/checkpoints/c1/resume", params={"force": "true"})
        assert resumed.status_code == 200 and resumed.json()["state"] == "running", resumed.text

    async def resumed_guest() -> None:
        shell = await SerialShell.open(server, node, booted=False)
        screen = await _shell_ok(shell, "tr a-z A-Z < /tmp/mark")
        assert _last_line(screen) == "KEPT", f"the guest's memory of the checkpoint: {screen}"
        assert "SAVED-SCREEN" in screen and "SPOILED-SCREEN" not in screen, "the scrollback"
        await shell.close()

    asyncio.run(resumed_guest())
    with server.client() as api:
        assert api.post(f"{ref}/kill").json()["state"] == "stopped"
        refused(api.delete(f"{ref}/checkpoints/nope"), 404, "no checkpoint 'nope'")
        assert api.delete(f"{ref}/checkpoints/c1").status_code == 204  # stopped: a bare domain
        assert api.get(f"{ref}/checkpoints").json() == []
        assert _disk_snapshots(h1, node) == []
        assert not h1.qemu_pids(), "the domain that opened the disk is gone"
        assert api.delete(ref).status_code == 204


LAB = """
name: mixed
topology:
  defaults: {image: IMAGE, ram_mb: 128}
  nodes:
    here: {host: local}
    there: {host: h1}
"""


def test_a_lab_checkpoint_saves_local_and_remote_nodes_at_one_moment(
    srv: tuple[Server, str], h1: LibvirtHost
) -> None:
    server, image = srv
    with server.client(timeout=600) as api:
        made = api.post("/api/labs", json={"topology": LAB.replace("IMAGE", image), "start": True})
        assert made.status_code == 201, made.text
        nodes = {n["name"]: n for n in api.get("/api/labs/mixed").json()["node_list"]}
        assert {n: nodes[n]["host"] for n in nodes} == {"here": "local", "there": "h1"}

    async def mark(word: str, booted: bool) -> None:
        for name in ("here", "there"):
            shell = await SerialShell.open(server, nodes[name], booted=booted)
            await _shell_ok(shell, f"echo {word}-{name} > /tmp/mark")
            await shell.close()

    asyncio.run(mark("kept", True))
    with server.client(timeout=600) as api:
        saved = api.post("/api/labs/mixed/checkpoints", json={"tag": "L1"})
        assert saved.status_code == 201, saved.text
        assert saved.json()["state"] == "ready", saved.json()
        assert _disk_snapshots(h1, nodes["there"]) == ["L1"]
        states = {n["name"]: n["state"] for n in api.get("/api/labs/mixed").json()["node_list"]}
        assert states == {"here": "running", "there": "running"}, "they run on after it"
    asyncio.run(mark("spoiled", False))
    with server.client(timeout=600) as api:
        resumed = api.post("/api/labs/mixed/checkpoints/L1/resume", params={"force": "true"})
        assert resumed.status_code == 200 and resumed.json()["running"] == 2, resumed.text

    async def check() -> None:
        for name in ("here", "there"):
            shell = await SerialShell.open(server, nodes[name], booted=False)
            screen = await _shell_ok(shell, "tr a-z A-Z < /tmp/mark")
            assert _last_line(screen) == f"KEPT-{name.upper()}", screen
            await shell.close()

    asyncio.run(check())
    with server.client(timeout=600) as api:
        assert api.post("/api/labs/mixed/stop").status_code == 200
        assert api.delete("/api/labs/mixed/checkpoints/L1").status_code == 204
        assert _disk_snapshots(h1, nodes["there"]) == []
        assert api.get("/api/nodes/mixed:here/checkpoints").json() == []
        assert api.delete("/api/labs/mixed").status_code == 204


# -- lab archives carry the disks of nodes on hosts -----------------------------------------------

ARCHIVED = """
name: arc
topology:
  defaults: {image: IMAGE, ram_mb: 128}
  nodes:
    near: {host: local}
    far: {host: h1}
"""
# The test disk is a 48 MiB FAT image whose files sit at its start: MiB 40 is free space.
WRITE = "dd if=/dev/urandom of=/dev/vda bs=1M count=1 seek=40 2>/dev/null && sync"
READ = "echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda bs=1M count=1 skip=40 | md5sum"


async def _md5(server: Server, node: dict, *, write: bool, booted: bool) -> str:
    shell = await SerialShell.open(server, node, booted=booted)
    try:
        if write:
            await _shell_ok(shell, WRITE)
        found = re.search(r"\b([0-9a-f]{32})\s+-", await _shell_ok(shell, READ))
        assert found
        return found[1]
    finally:
        await shell.close()


def test_a_lab_archive_carries_a_remote_disk_and_its_checkpoint_back_to_the_host(
    srv: tuple[Server, str], h1: LibvirtHost, tmp_path: Path
) -> None:
    """Exported: the node's volume downloaded into the archive as a local overlay is stored;
    imported: uploaded over a fresh volume on h1, where the guest reads what it wrote."""
    server, image = srv
    with server.client(timeout=600) as api:
        body = {"topology": ARCHIVED.replace("IMAGE", image), "start": True}
        assert api.post("/api/labs", json=body).status_code == 201
        far = api.get("/api/nodes/arc:far").json()
        assert far["host"] == "h1"
    written = asyncio.run(_md5(server, far, write=True, booted=True))
    with server.client(timeout=600) as api:
        assert api.post("/api/nodes/arc:far/checkpoints", json={"tag": "w"}).status_code == 201
        reply = api.get("/api/labs/arc/archive")
        refused(reply, 409, "must be stopped", "virtlab lab stop arc")
        assert not list((server.data_dir / "staging").iterdir()), "no copy left behind"
        assert api.post("/api/labs/arc/stop").status_code == 200
        # As an older server left it: libvirt's default qcow2 v2 (the export makes it v3).
        assert h1.daemon is not None
        subprocess.run(["nsenter", "-t", str(h1.daemon.pid), "-m", "qemu-img", "amend", "-o",
                        "compat=0.10", f"/var/lib/libvirt/virtlab/node-{far['id']}.qcow2"],
                       check=True)  # fmt: skip
        got = api.get("/api/labs/arc/archive")
        assert got.status_code == 200, got.text
    archive = tmp_path / "arc.tar"
    archive.write_bytes(got.content)
    with tarfile.open(archive) as tar:
        tar.extract("nodes/far.qcow2", tmp_path, filter="data")
    copy = tmp_path / "nodes" / "far.qcow2"
    argv = ["qemu-img", "info", "--output=json", str(copy)]
    info = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    assert info["backing-filename"] == f"{_sha256_of(server, image)}.qcow2", "the placeholder"
    assert [s["name"] for s in info.get("snapshots", [])] == ["w"]
    assert info["format-specific"]["data"]["compat"] == "1.1"

    volumes = set((h1.folder("lib") / "virtlab").glob("node-*"))
    with server.client(timeout=600) as api:
        assert api.post("/api/hosts/h1/drain", json={}).json()["drained"]
        tar = {"content": archive.read_bytes(), "headers": {"content-type": "application/x-tar"}}
        reply = api.post("/api/labs/import", params={"name": "arc2"}, **tar)
        refused(reply, 409, "host h1 is drained")
        assert api.get("/api/labs/arc2").status_code == 404, "no lab is kept"
        assert set((h1.folder("lib") / "virtlab").glob("node-*")) == volumes, "nor a volume"
        assert not list((server.data_dir / "staging").iterdir())
        api.post("/api/hosts/h1/drain", json={"drained": False})
        done = api.post("/api/labs/import", params={"name": "arc2"}, **tar)
        assert done.status_code == 201, done.text
        far2 = api.get("/api/nodes/arc2:far").json()
        assert far2["host"] == "h1", "it lands on the host its lab file names"
        assert [c["tag"] for c in api.get("/api/nodes/arc2:far/checkpoints").json()] == ["w"]
        assert _disk_snapshots(h1, far2) == ["w"]
        assert api.post("/api/nodes/arc2:far/start").json()["state"] == "running"
    assert asyncio.run(_md5(server, far2, write=False, booted=True)) == written
    with server.client(timeout=600) as api:
        resumed = api.post("/api/nodes/arc2:far/checkpoints/w/resume", params={"force": "true"})
        assert resumed.status_code == 200, resumed.text
    assert asyncio.run(_md5(server, far2, write=False, booted=False)) == written
    with server.client(timeout=600) as api:
        for lab in ("arc", "arc2"):
            assert api.post(f"/api/labs/{lab}/stop").status_code == 200
            assert api.delete(f"/api/labs/{lab}").status_code == 204
    assert not list((h1.folder("lib") / "virtlab").glob("node-*")), "their volumes went"


def _sha256_of(server: Server, image: str) -> str:
    with server.client() as api:
        return str(api.get(f"/api/images/{image}").json()["sha256"])


# -- last in the module: it restarts the module's server ------------------------------------------


def test_at_start_up_the_checkpoint_rows_are_made_to_agree_with_the_hosts_disks(
    srv: tuple[Server, str], h1: LibvirtHost
) -> None:
    """A half-saved checkpoint goes from the volume and the catalog; a row whose snapshot left
    the volume behind the server's back is dropped; a sound one stays and resumes. A host that
    does not answer at start-up is reconciled when it answers."""
    server, image = srv
    with server.client() as api:
        node = make_node(api, image, "rs", host="h1")
        ref = f"/api/nodes/{node['id']}"
        assert api.post(f"{ref}/start").json()["state"] == "running"
        for tag in ("t1", "t2", "t3"):
            assert api.post(f"{ref}/checkpoints", json={"tag": tag}).status_code == 201
        assert api.post(f"{ref}/kill").json()["state"] == "stopped"
    assert h1.daemon is not None  # qemu-img in h1's mount namespace, where the base is
    disk = f"/var/lib/libvirt/virtlab/node-{node['id']}.qcow2"
    subprocess.run(["nsenter", "-t", str(h1.daemon.pid), "-m", "qemu-img", "snapshot", "-d", "t2",
                    disk], check=True)  # fmt: skip
    with sqlite3.connect(server.data_dir / "catalog.sqlite3", timeout=30) as db:
        db.execute("UPDATE checkpoints SET state = 'saving' WHERE tag = 't3'")
    server.stop()
    server.start()
    with server.client() as api:
        kept = api.get(f"{ref}/checkpoints").json()
        assert [(c["tag"], c["state"]) for c in kept] == [("t1", "ready")]
        assert _disk_snapshots(h1, node) == ["t1"], "the half-saved t3 left the volume"
        resumed = api.post(f"{ref}/checkpoints/t1/resume")
        assert resumed.status_code == 200 and resumed.json()["state"] == "running", resumed.text
        assert api.post(f"{ref}/checkpoints", json={"tag": "t4"}).status_code == 201
        assert api.post(f"{ref}/kill").json()["state"] == "stopped"
    # Again with t4 half-saved, and h1 not answering when the server starts: its rows wait.
    with sqlite3.connect(server.data_dir / "catalog.sqlite3", timeout=30) as db:
        db.execute("UPDATE checkpoints SET state = 'saving' WHERE tag = 't4'")
    server.stop()
    h1.stop_daemon()
    server.start()
    with server.client() as api:
        kept = api.get(f"{ref}/checkpoints").json()
        assert [(c["tag"], c["state"]) for c in kept] == [("t1", "ready"), ("t4", "saving")]
    watch(server, h1.start_daemon, host_is("h1", "up"))
    with server.client() as api:
        kept = api.get(f"{ref}/checkpoints").json()
        assert [(c["tag"], c["state"]) for c in kept] == [("t1", "ready")], "reconciled"
        assert _disk_snapshots(h1, node) == ["t1"]
        assert api.delete(ref).status_code == 204
