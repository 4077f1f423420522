"""Lab archives on real servers and real guests: a disk written in a guest on one server reads
the same in the guest of the imported lab on another; a missing base image is named; hostile
archives are refused and leave nothing behind."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from support.bootdisk import boot_disk
from support.bootiso import boot_iso
from support.console import SerialShell
from support.server import Server

EXAMPLES = Path(__file__).parents[1] / "examples"
VIRTLAB = str(Path(sys.executable).with_name("virtlab"))
LAB = "two-routers"
# The test disk is a 48 MiB FAT image whose files sit at its start: MiB 40 is free space.
WRITE = "dd if=/dev/urandom of=/dev/vda bs=1M count=1 seek=40 2>/dev/null && sync"
READ = (  # from the disk, not the page cache
    "echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda bs=1M count=1 skip=40 2>/dev/null | md5sum"
)


@dataclass
class Origin:
    server: Server
    image: dict
    md5: str
    busy: httpx.Response  # the archive asked for while r1 ran
    with_images: Path
    without_images: Path


def cli(server: Server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [VIRTLAB, *args], capture_output=True, text=True, timeout=600,
        env={**os.environ, **server.cli_env, "COLUMNS": "200"},
    )  # fmt: skip


async def md5_of_disk(server: Server, node: str, *, write: bool = False) -> str:
    with server.client() as client:
        info = client.get(f"/api/nodes/{LAB}:{node}").json()
    shell = await SerialShell.open(server, info)
    try:
        if write:
            status, output = await shell.run(WRITE, timeout=120)
            assert status == 0, output
        status, output = await shell.run(READ, timeout=120)
        assert status == 0, output
        found = re.search(r"\b([0-9a-f]{32})\s+-", output)
        assert found, output
        return found[1]
    finally:
        await shell.close()


def read_member(tar: tarfile.TarFile, name: str) -> bytes:
    f = tar.extractfile(name)
    assert f is not None
    return f.read()


def save_archive(client: httpx.Client, lab: str, path: Path, **params: str) -> dict:
    """Download ``lab``'s archive to ``path``; its manifest."""
    archive = client.get(f"/api/labs/{lab}/archive", params=params)
    assert archive.status_code == 200, archive.text
    path.write_bytes(archive.content)
    with tarfile.open(path) as tar:
        return json.loads(read_member(tar, "manifest.json"))


def qemu_img_info(image: Path) -> dict:
    argv = ["qemu-img", "info", "--output=json", "-f", "qcow2", str(image)]
    return json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


def state_of(server: Server) -> dict:
    """What an import must not leave behind when it fails."""
    with server.client() as client:
        return {
            "labs": sorted(lab["name"] for lab in client.get("/api/labs").json()),
            "nodes": sorted(n["id"] for n in client.get("/api/nodes").json()),
            "images": sorted(i["name"] for i in client.get("/api/images").json()),
            "node_dirs": sorted(p.name for p in (server.data_dir / "nodes").iterdir()),
            "staging": sorted(p.name for p in (server.data_dir / "staging").iterdir()),
        }


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    """Server A: the lab, r1's disk written from inside the guest, archived both ways."""
    server = Server(tmp_path_factory.mktemp("origin")).start()
    out = tmp_path_factory.mktemp("archives")
    try:
        with server.client(timeout=600) as client:
            raw = boot_disk(tmp_path_factory).read_bytes()
            image = client.put("/api/images/boot.img", content=raw).json()
            text = (EXAMPLES / "two-routers.yaml").read_text()
            made = client.post(
                "/api/labs", json={"topology": text, "image": image["name"], "start": False}
            )
            assert made.status_code == 201, made.text
            assert client.post(f"/api/nodes/{LAB}:r1/start").status_code == 200
            md5 = asyncio.run(md5_of_disk(server, "r1", write=True))
            busy = client.get(f"/api/labs/{LAB}/archive")
            stopped = client.post(f"/api/nodes/{LAB}:r1/stop")
            assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"
            with_images = out / "with-images.tar"
            with client.stream("GET", f"/api/labs/{LAB}/archive?images=true") as response:
                assert response.status_code == 200, response.read()
                assert response.headers["content-type"] == "application/x-tar"
                with with_images.open("wb") as f:
                    for block in response.iter_bytes():
                        f.write(block)
                assert int(response.headers["content-length"]) == with_images.stat().st_size
        without_images = out / "without-images.tar"
        done = cli(server, "lab", "archive", LAB, "-o", str(without_images))
        assert done.returncode == 0, done.stderr
        yield Origin(server, image, md5, busy, with_images, without_images)
    finally:
        server.kill_nodes()
        server.stop()


def test_a_running_node_is_named_and_blocks_the_archive(origin: Origin) -> None:
    assert origin.busy.status_code == 409
    assert "r1" in origin.busy.json()["detail"] and "stop" in origin.busy.json()["detail"]
    assert list((origin.server.data_dir / "staging").iterdir()) == []


def test_the_archive_holds_the_lab_its_disks_and_its_images(origin: Origin, tmp_path: Path) -> None:
    sha = origin.image["sha256"]
    listing = subprocess.run(["tar", "-tf", str(origin.with_images)], capture_output=True,
                             text=True, check=True).stdout.split()  # fmt: skip
    assert listing == ["manifest.json", "lab.yaml", "nodes/r1.qcow2", "nodes/r2.qcow2",
                       f"images/{sha}.qcow2"]  # fmt: skip
    with tarfile.open(origin.with_images) as tar:
        manifest = json.loads(read_member(tar, "manifest.json"))
        assert b"name: two-routers" in read_member(tar, "lab.yaml")
        tar.extract("nodes/r1.qcow2", tmp_path, filter="data")
        stored = origin.server.data_dir / "images" / origin.image["path"]
        assert read_member(tar, f"images/{sha}.qcow2") == stored.read_bytes()
    assert manifest["format"] == "virtlab-lab-archive" and manifest["version"] == 2
    assert manifest["lab"] == LAB and manifest["created_at"]
    assert manifest["nodes"] == [
        {"name": n, "image": origin.image["name"], "image_sha256": sha, "disk": "overlay",
         "checkpoints": []}
        for n in ("r1", "r2")
    ]  # fmt: skip
    assert manifest["images"] == [
        {"sha256": sha, "name": origin.image["name"], "kind": "disk", "included": True}
    ]
    info = qemu_img_info(tmp_path / "nodes/r1.qcow2")
    assert info["backing-filename"] == f"{sha}.qcow2"  # a placeholder, not a path of server A
    assert info["backing-filename-format"] == "qcow2"
    with tarfile.open(origin.without_images) as tar:
        assert [m.name for m in tar] == ["manifest.json", "lab.yaml", "nodes/r1.qcow2",
                                         "nodes/r2.qcow2"]  # fmt: skip


def test_an_abandoned_download_leaves_no_copies_behind(origin: Origin) -> None:
    staging = origin.server.data_dir / "staging"
    with origin.server.client() as client:
        with client.stream("GET", f"/api/labs/{LAB}/archive?images=true") as response:
            assert response.status_code == 200
            next(response.iter_raw(4096))
            assert [p.name[:12] for p in staging.iterdir()] == ["lab-archive-"]
        deadline = time.monotonic() + 30
        while list(staging.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert list(staging.iterdir()) == []


def test_imported_with_its_images_the_guest_reads_the_same_disk(
    origin: Origin, make_server: Callable[..., Server]
) -> None:
    server = make_server()
    with server.client(timeout=600) as client:
        response = client.post(
            "/api/labs/import", content=origin.with_images.read_bytes(),
            headers={"content-type": "application/x-tar"},
        )  # fmt: skip
        assert response.status_code == 201, response.text
        body = response.json()
        assert (body["name"], body["nodes"], body["running"], body["links"]) == (LAB, 2, 0, 1)
        assert body["images_reused"] == [] and len(body["images_imported"]) == 1
        image = client.get(f"/api/images/{body['images_imported'][0]}").json()
        assert image["sha256"] == origin.image["sha256"]
        lab = client.get(f"/api/labs/{LAB}").json()
        assert {n["state"] for n in lab["node_list"]} == {"stopped"}
        assert {n["image"] for n in lab["node_list"]} == {image["name"]}
        assert client.post(f"/api/labs/{LAB}/start").json()["running"] == 2
    assert list((server.data_dir / "staging").iterdir()) == []

    async def both() -> tuple[str, str]:
        return await md5_of_disk(server, "r1"), await md5_of_disk(server, "r2")

    r1, r2 = asyncio.run(both())
    assert r1 == origin.md5  # written on server A, read on server B
    assert r2 != origin.md5  # each node got its own disk


def test_without_its_images_the_missing_image_is_named_then_found_by_sha256(
    origin: Origin, make_server: Callable[..., Server]
) -> None:
    server = make_server()
    before = state_of(server)
    refused = cli(server, "lab", "import", str(origin.without_images))
    assert refused.returncode == 1
    message = " ".join(refused.stderr.split())
    assert origin.image["sha256"] in message and origin.image["name"] in message, message
    assert "404" in message
    assert state_of(server) == before

    # The same base, imported on its own first (a clean qcow2 is stored as it is).
    stored = origin.server.data_dir / "images" / origin.image["path"]
    with server.client(timeout=600) as client:
        local = client.put("/api/images/router.qcow2", content=stored.read_bytes()).json()
    assert local["sha256"] == origin.image["sha256"] and local["name"] != origin.image["name"]
    done = cli(server, "lab", "import", str(origin.without_images), "--json")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["images_reused"] == [local["name"]] and body["images_imported"] == []
    again = cli(server, "lab", "import", str(origin.without_images))
    assert again.returncode == 1 and "already exists" in again.stderr
    renamed = cli(server, "lab", "import", str(origin.without_images), "--name", "copy")
    assert renamed.returncode == 0, renamed.stderr
    with server.client() as client:
        for name in (LAB, "copy"):
            nodes = client.get(f"/api/labs/{name}").json()["node_list"]
            assert {(n["name"], n["image"], n["state"]) for n in nodes} == {
                ("r1", local["name"], "stopped"), ("r2", local["name"], "stopped")
            }  # fmt: skip
    assert list((server.data_dir / "staging").iterdir()) == []


# -- hostile archives ---------------------------------------------------------------------------

Change = Callable[[tarfile.TarFile, tarfile.TarInfo, bytes], bool]


def rebuilt(
    source: Path, change: Change, extra: Callable[[tarfile.TarFile], None] = lambda tar: None
) -> bytes:
    """``source`` written again; ``change(out, member, data)`` writes a member itself or says
    False to keep it; ``extra(out)`` adds members at the end."""
    buffer = io.BytesIO()
    with tarfile.open(source) as tar, tarfile.open(fileobj=buffer, mode="w") as out:
        for member in tar:
            data = read_member(tar, member.name)
            if not change(out, member, data):
                out.addfile(member, io.BytesIO(data))
        extra(out)
    return buffer.getvalue()


def add(out: tarfile.TarFile, name: str, data: bytes, **fields: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    out.addfile(info, io.BytesIO(data))


def replacing(name: str, data: bytes, **fields: object) -> Change:
    def change(out: tarfile.TarFile, member: tarfile.TarInfo, _old: bytes) -> bool:
        if member.name != name:
            return False
        add(out, name, data, **fields)
        return True

    return change


def overlay(tmp: Path, *options: str) -> bytes:
    path = tmp / "evil.qcow2"
    path.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *options, str(path), "48M"],
                   check=True, capture_output=True)  # fmt: skip
    return path.read_bytes()


def keep(_out: tarfile.TarFile, _member: tarfile.TarInfo, _data: bytes) -> bool:
    return False


def test_hostile_archives_are_refused_and_leave_nothing_behind(
    origin: Origin, make_server: Callable[..., Server], tmp_path: Path
) -> None:
    src, sha = origin.with_images, origin.image["sha256"]
    (tmp_path / "data.raw").write_bytes(b"")
    symlink = {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}
    with tarfile.open(src) as tar:
        manifest = json.loads(read_member(tar, "manifest.json"))
    sneaky = {**manifest, "nodes": [{**manifest["nodes"][0], "name": "../../x"}]}
    cases = {
        "a ../ member": (rebuilt(src, keep, lambda t: add(t, "../evil", b"x")), 400, "../evil"),
        "a symlink": (rebuilt(src, keep, lambda t: add(t, "lab.yaml.lnk", b"", **symlink)),
                      400, "not a regular file"),
        "a symlinked disk": (rebuilt(src, replacing("nodes/r1.qcow2", b"", **symlink)), 400,
                             "not a regular file"),
        "an overlay on /etc/passwd": (rebuilt(src, replacing("nodes/r1.qcow2", overlay(
            tmp_path, "-b", "/etc/passwd", "-F", "raw"))), 422, "/etc/passwd"),
        "an overlay with a data file": (rebuilt(src, replacing("nodes/r2.qcow2", overlay(
            tmp_path, "-b", f"{sha}.qcow2", "-F", "qcow2", "-u",
            "-o", f"data_file={tmp_path / 'data.raw'}"))), 422, "data file"),
        "an image that is not its sha256": (rebuilt(src, replacing(f"images/{sha}.qcow2",
            overlay(tmp_path))), 422, f"is not the image its manifest names (sha256 {sha})"),
        "a huge manifest": (rebuilt(src, replacing("manifest.json", b" " * (2 << 20))),
                            413, "manifest.json"),
        "a bad manifest": (rebuilt(src, replacing("manifest.json", json.dumps(sneaky).encode())),
                           400, "manifest"),
        "not a tar": (os.urandom(100_000), 400, "not a tar file"),
        "an empty body": (b"", 400, "not a tar file"),
        "a cut tar": (src.read_bytes()[:300_000], 400, "cut short"),
    }  # fmt: skip
    server = make_server()
    before = state_of(server)
    with server.client(timeout=600) as client:
        for case, (body, status, words) in cases.items():
            response = client.post("/api/labs/import", content=body)
            assert response.status_code == status, (case, response.text)
            assert words in response.json()["detail"], (case, response.text)
            assert state_of(server) == before, case


def test_a_cdrom_node_travels_with_its_blank_disk_and_its_iso(
    origin: Origin, make_server: Callable[..., Server], tmp_path_factory: pytest.TempPathFactory
) -> None:
    iso = boot_iso(tmp_path_factory)
    with origin.server.client(timeout=600) as client:
        image = client.put("/api/images/install.iso", content=iso.read_bytes()).json()
        text = f"""
name: install
topology:
  nodes:
    pc: {{image: {image["name"]}, disk_size_mb: 64, ram_mb: 128}}
"""
        made = client.post("/api/labs", json={"topology": text, "start": False})
        assert made.status_code == 201, made.text
        path = tmp_path_factory.mktemp("cdrom") / "install.tar"
        manifest = save_archive(client, "install", path, images="true")
    with tarfile.open(path) as tar:
        assert tar.getnames()[2:] == ["nodes/pc.qcow2", f"images/{image['sha256']}.iso"]
    assert manifest["nodes"][0]["disk"] == "blank" and manifest["images"][0]["kind"] == "cdrom"

    server = make_server()
    before = state_of(server)
    with server.client(timeout=600) as client:
        # A blank disk must have no backing file at all.
        evil = rebuilt(path, replacing("nodes/pc.qcow2", overlay(
            path.parent, "-b", "/etc/passwd", "-F", "raw")))  # fmt: skip
        refused = client.post("/api/labs/import", content=evil)
        assert refused.status_code == 422 and "backing file" in refused.json()["detail"]
        assert state_of(server) == before
        done = client.post("/api/labs/import", content=path.read_bytes())
        assert done.status_code == 201, done.text
        local = client.get(f"/api/images/{done.json()['images_imported'][0]}").json()
        assert (local["kind"], local["sha256"]) == ("cdrom", image["sha256"])
        node = client.get("/api/labs/install").json()["node_list"][0]
        assert (node["image"], node["state"]) == (local["name"], "stopped")
    disk = qemu_img_info(server.data_dir / "nodes" / node["id"] / "disk.qcow2")
    assert disk["virtual-size"] == 64 << 20 and "backing-filename" not in disk


# -- checkpoints --------------------------------------------------------------------------------


def test_checkpoints_travel_inside_the_disks_with_their_records(
    origin: Origin, make_server: Callable[..., Server], tmp_path: Path
) -> None:
    """A lab checkpoint and a node's own one, archived, imported on another server and resumed
    there; imported with --no-checkpoints, none is left in the disks; a manifest that does not
    match the disk's snapshots is refused."""
    with origin.server.client(timeout=600) as client:
        node = one_node_lab(client, origin, "snap", "s1")
        asyncio.run(run_on(origin.server, node, "VAR=travelled"))
        assert client.post("/api/labs/snap/checkpoints", json={"tag": "lab"}).status_code == 201
        assert client.post("/api/nodes/snap:s1/checkpoints", json={"tag": "own"}).status_code == 201
        saved = {c["tag"]: c for c in client.get("/api/nodes/snap:s1/checkpoints").json()}
        assert client.post("/api/nodes/snap:s1/kill").status_code == 200
        path = tmp_path / "snap.tar"
        manifest = save_archive(client, "snap", path)
    listed = manifest["nodes"][0]["checkpoints"]
    assert [(c["tag"], c["lab"]) for c in listed] == [("lab", True), ("own", False)]
    assert all(c["machine"].startswith("pc-i440fx-") and c["accel"] for c in listed)

    server = make_server()
    with server.client(timeout=600) as client:
        stored = origin.server.data_dir / "images" / origin.image["path"]
        assert client.put("/api/images/base.qcow2", content=stored.read_bytes()).status_code == 201
        done = client.post("/api/labs/import", content=path.read_bytes())
        assert done.status_code == 201, done.text
        here = {c["tag"]: c for c in client.get("/api/nodes/snap:s1/checkpoints").json()}
        assert set(here) == {"lab", "own"}
        for tag in here:
            for key in ("vm_state_size", "machine", "qemu_version", "ram_mb", "lab_checkpoint"):
                assert here[tag][key] == saved[tag][key], (tag, key)
        assert [c["tag"] for c in client.get("/api/labs/snap/checkpoints").json()] == ["lab"]
        resumed = client.post("/api/labs/snap/checkpoints/lab/resume")
        assert resumed.status_code == 200 and resumed.json()["running"] == 1, resumed.text
        node = client.get("/api/nodes/snap:s1").json()
        assert "v=travelled" in asyncio.run(run_on(server, node, 'echo "v=$VAR"', booted=False))
        client.post("/api/nodes/snap:s1/kill")

        bare = client.post("/api/labs/import", content=path.read_bytes(),
                           params={"name": "bare", "checkpoints": "false"})  # fmt: skip
        assert bare.status_code == 201, bare.text
        bare_node = client.get("/api/nodes/bare:s1").json()
        assert client.get("/api/nodes/bare:s1/checkpoints").json() == []
    disk = server.data_dir / "nodes" / bare_node["id"] / "disk.qcow2"
    assert "snapshots" not in qemu_img_info(disk)

    lying = {**manifest, "nodes": [{**manifest["nodes"][0], "checkpoints": listed[:1]}]}
    before = state_of(server)
    with server.client(timeout=600) as client:
        response = client.post(
            "/api/labs/import", params={"name": "lying"},
            content=rebuilt(path, replacing("manifest.json", json.dumps(lying).encode())),
        )  # fmt: skip
    assert response.status_code == 400, response.text
    assert "holds the checkpoints 'lab', 'own' but its manifest lists lab" in response.text
    assert state_of(server) == before


def one_node_lab(client: httpx.Client, origin: Origin, lab: str, node: str) -> dict:
    """Deploy and start lab ``lab`` of one node ``node`` from the origin's image; the node."""
    text = f"""
name: {lab}
topology:
  defaults: {{image: {origin.image["name"]}, ram_mb: 128, nics: 1, vnc: false}}
  nodes: {{{node}: {{}}}}
"""
    assert client.post("/api/labs", json={"topology": text}).status_code == 201
    return client.get(f"/api/nodes/{lab}:{node}").json()


async def run_on(server: Server, node: dict, command: str, *, booted: bool = True) -> str:
    shell = await SerialShell.open(server, node, booted=booted)
    try:
        status, output = await shell.run(command, timeout=120)
        assert status == 0, output
        return output
    finally:
        await shell.close()


def test_a_snapshot_without_a_record_is_left_out_of_the_archive(
    origin: Origin, tmp_path: Path
) -> None:
    """An internal snapshot the catalog has no record of (made with ``qemu-img`` while the node
    was stopped) is deleted from the disk's copy, whose backing file is by then a placeholder
    that does not exist; the recorded checkpoint stays, and the node's own disk keeps both."""
    with origin.server.client(timeout=600) as client:
        node = one_node_lab(client, origin, "strays", "t1")
        made = client.post("/api/nodes/strays:t1/checkpoints", json={"tag": "kept"})
        assert made.status_code == 201, made.text
        assert client.post("/api/nodes/strays:t1/kill").status_code == 200
        disk = origin.server.data_dir / "nodes" / node["id"] / "disk.qcow2"
        subprocess.run(["qemu-img", "snapshot", "-c", "stray", str(disk)], check=True)
        path = tmp_path / "strays.tar"
        manifest = save_archive(client, "strays", path)
    with tarfile.open(path) as tar:
        tar.extract("nodes/t1.qcow2", tmp_path, filter="data")
    assert [c["tag"] for c in manifest["nodes"][0]["checkpoints"]] == ["kept"]

    def tags(image: Path) -> list[str]:
        return sorted(s["name"] for s in qemu_img_info(image).get("snapshots", []))

    copied = tmp_path / "nodes/t1.qcow2"
    assert tags(copied) == ["kept"]
    assert qemu_img_info(copied)["backing-filename"] == f"{origin.image['sha256']}.qcow2"
    assert tags(disk) == ["kept", "stray"]
    assert list((origin.server.data_dir / "staging").iterdir()) == []
    with origin.server.client(timeout=600) as client:  # a stopped node's, opened alone too
        assert client.delete("/api/nodes/strays:t1/checkpoints/kept").status_code == 204
    assert tags(disk) == ["stray"]
