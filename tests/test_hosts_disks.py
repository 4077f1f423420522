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
from collections.abc import Callable, Iterator

import httpx
import pytest
from websockets.asyncio.client import connect

pytest.importorskip(
    "libvirt", reason="libvirt-python is not installed: pip install -e '.[libvirt]'"
)

from support.bootdisk import boot_disk
from support.fake_peers import short_dir
from support.libvirt_hosts import LibvirtHost, have_libvirtd
from support.server import Server
from virtlab.hosts.connection import HostConnection
from virtlab.hosts.volumes import HostStorage

NEEDS = "apt-get install libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients"
pytestmark = pytest.mark.skipif(not have_libvirtd(), reason=NEEDS)


@pytest.fixture(scope="module")
def h1() -> Iterator[LibvirtHost]:
    with short_dir("vhd-") as root, LibvirtHost.start(root / "h1") as host:
        yield host


@pytest.fixture(scope="module")
def srv(h1: LibvirtHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A server with host h1 added and the boot disk imported (its image's name)."""
    # TCG everywhere: this machine's libvirt offers a KVM that cannot run guests (nested).
    server = Server(tmp_path_factory.mktemp("data"), env={"VIRTLAB_ACCEL": "tcg"}).start()
    try:
        with server.client() as api:
            raw = boot_disk(tmp_path_factory).read_bytes()
            made = api.put("/api/images/boot.img", content=raw)
            assert made.status_code == 201, made.text
            added = api.post("/api/hosts", json={"name": "h1", "uri": h1.uri})
            assert added.status_code == 201, added.text
        yield server, made.json()["name"]
    finally:
        server.kill_nodes()
        server.stop()


def _node(api: httpx.Client, name: str, image: str, **fields: object) -> dict:
    made = api.post("/api/nodes", json={"name": name, "image": image, "ram_mb": 128, **fields})
    assert made.status_code == 201, made.text
    return made.json()


def _refused(reply: httpx.Response, status: int, *words: str) -> str:
    assert reply.status_code == status, reply.text
    detail = reply.json()["detail"]
    for word in words:
        assert word in detail, detail
    return detail


def _bases(host: LibvirtHost) -> set[str]:
    return {p.name for p in (host.folder("lib") / "virtlab").glob("base-*")}


def _watch(server: Server, then: Callable[[], object], until: Callable[[dict], bool],
           timeout: float = 120) -> list[dict]:  # fmt: skip
    """Subscribe to the events, do ``then`` (in a thread), read events until one is ``until``."""

    async def run() -> list[dict]:
        seen: list[dict] = []
        url = server.ws_url("/api/events")
        async with connect(url, additional_headers=server.headers) as ws:
            await asyncio.to_thread(then)

            async def loop() -> list[dict]:
                while not seen or not until(seen[-1]):
                    seen.append(json.loads(await ws.recv()))
                return seen

            return await asyncio.wait_for(loop(), timeout)

    return asyncio.run(run())


def _host_is(name: str, state: str) -> Callable[[dict], bool]:
    return lambda e: e["kind"] == "host" and e["name"] == name and e["state"] == state


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
        keep = _node(api, "keep", image, host="h1")
        before = _bases(h1)
        assert len(before) == 2, "the boot image's base and its seal"
        node = _node(api, "b1", other, host="h1")
        pushed = _bases(h1) - before
        assert len(pushed) == 2, "the base and its seal reached h1"

        detail = _refused(api.delete(f"/api/images/{other}"), 409, "b1", "delete those first")
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
        node = _node(api, "b2", other, host="h1")
        assert _bases(h1) >= pushed
        assert api.delete(f"/api/nodes/{node['id']}").status_code == 204
    _watch(server, h1.stop_daemon, _host_is("h1", "down"))
    with server.client() as api:
        assert api.delete(f"/api/images/{other}").status_code == 204, "deleted here all the same"
        assert api.get(f"/api/images/{other}").status_code == 404
        assert _bases(h1) >= pushed, "h1 did not answer: its volume is still there"
    _watch(server, h1.start_daemon, _host_is("h1", "up"))
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
