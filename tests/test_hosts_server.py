"""Libvirt hosts through a real ``virtlab serve``: add, list, show, drain and remove them (and the
refusals), a node on a named host, placement, and a host that stops answering and comes back.

``h1`` is a libvirtd on plain TCP, ``h2`` one on TLS with a client-certificate allow-list
(``tests/support/libvirt_hosts.py``); both, the server and the image are shared by the module.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip(
    "libvirt", reason="libvirt-python is not installed: pip install -e '.[libvirt]'"
)

from support.console import SerialShell
from support.hosts_server import (
    add_host,
    cli,
    hosts_server,
    libvirt_hosts,
    make_node,
    needs_libvirtd,
    node_is,
    refused,
    watch,
)
from support.libvirt_hosts import LibvirtHost, free_port
from support.server import Server
from virtlab.devtools.bootdisk import BOOT_MARKER

pytestmark = needs_libvirtd


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[LibvirtHost, ...]]:
    with libvirt_hosts("vhs-", "h1", "h2", tls=("h2",)) as started:
        yield started


@pytest.fixture(scope="module")
def srv(
    hosts: tuple[LibvirtHost, ...], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, str]]:
    """A server with the boot disk imported, and h1 (by the CLI) and h2 (by --tls-cert) added."""
    h1, h2 = hosts
    with hosts_server(tmp_path_factory) as (server, image):
        done = cli(server, "host", "add", "h1", h1.uri)
        assert done.returncode == 0 and "added host h1" in done.stdout, done.stderr
        with server.client() as api:
            add_host(api, h2)
        yield server, image


def _act(api: httpx.Client, node: dict, action: str, **params: object) -> dict:
    reply = api.post(f"/api/nodes/{node['id']}/{action}", params=params)
    assert reply.status_code == 200, reply.text
    return reply.json()


def _boot_log(server: Server, node: dict) -> bytes:
    """What ``node``'s serial console shows, from its first line to the boot marker."""

    async def read() -> bytes:
        shell = await SerialShell.open(server, node, booted=False)
        try:
            return (await shell.wait_for(rb"(?s).*?" + BOOT_MARKER.encode(), 180))[0]
        finally:
            await shell.close()

    return asyncio.run(read())


# -- hosts --------------------------------------------------------------------------------------


def test_hosts_are_listed_with_their_facts_and_refusals_keep_nothing(
    srv: tuple[Server, str], hosts: tuple[LibvirtHost, ...], tmp_path: Path
) -> None:
    server, _ = srv
    h1, h2 = hosts
    with server.client() as api:
        listed = {h["name"]: h for h in api.get("/api/hosts").json()}
        assert list(listed) == ["local", "h1", "h2"]
        for name in ("h1", "h2"):
            host = listed[name]
            assert host["reachable"] and not host["drained"] and host["nodes"] == 0
            assert host["facts"]["libvirt_version"].startswith("9.")
            assert host["facts"]["cpus"] >= 1 and host["facts"]["memory_mb"] > 0
            assert "qemu" in host["facts"]["accelerators"]
        assert listed["h2"]["uri"] == f"{h2.uri.split('?')[0]}?pkipath={h2.client_pki}"
        assert listed["local"]["facts"]["qemu_version"] and listed["local"]["uri"] == "local"
        shown = api.get("/api/hosts/h1").json()
        assert shown["facts"]["free_memory_mb"] > 0

        refused(api.post("/api/hosts", json={"name": "h1", "uri": "qemu+tcp://10.9.9.9/system"}),
                 409, "there is a host named h1 already")  # fmt: skip
        refused(api.post("/api/hosts", json={"name": "h9", "uri": h1.uri}), 409, "host h1 has")
        refused(api.post("/api/hosts", json={"name": "h9", "uri": "http://x/"}), 400, "qemu+tls")
        refused(api.post("/api/hosts", json={"name": "-h", "uri": h1.uri}), 400, "host name")
        gone = f"qemu+tcp://127.0.0.1:{free_port()}/system"
        refused(api.post("/api/hosts", json={"name": "h9", "uri": gone}), 409,
                 "cannot add host h9", "firewall", "libvirtd")  # fmt: skip
        no_cert = tmp_path / "no-cert"
        no_cert.mkdir()
        shutil.copy(h2.client_pki / "cacert.pem", no_cert / "cacert.pem")  # type: ignore[operator]
        body = {"name": "h9", "uri": h2.uri.split("?")[0], "tls_cert": str(no_cert)}
        refused(api.post("/api/hosts", json=body), 409, "cannot add host h9", "clientcert.pem")
        assert [h["name"] for h in api.get("/api/hosts").json()] == ["local", "h1", "h2"]
        # Two adds of one host at once: both pass the first check while they connect; the
        # insert checks again, so one is made and the other refused, not a 500.
        assert api.delete("/api/hosts/h2").status_code == 204
        made, twice = asyncio.run(_add_twice(server, h2))
        assert made.status_code == 201, made.text
        refused(twice, 409, "there is a host named h2 already")
        assert [h["name"] for h in api.get("/api/hosts").json()] == ["local", "h1", "h2"]
        refused(api.delete("/api/hosts/local"), 409, "drain it")
        refused(api.get("/api/hosts/nope"), 404, "virtlab host list")

        made = api.post("/api/users", json={"name": "hostuser"}).json()
    token = server.login("hostuser", made["password"])
    with server.client(token=token) as user:
        assert [h["name"] for h in user.get("/api/hosts").json()] == ["local", "h1", "h2"]
        refused(user.post("/api/hosts", json={"name": "h9", "uri": h1.uri}), 403)
        refused(user.post("/api/hosts/h1/drain", json={}), 403)
        refused(user.delete("/api/hosts/h1"), 403)

    listing = cli(server, "host", "list")
    assert listing.returncode == 0 and re.search(r"h2 .*qemu\+tls", listing.stdout), listing
    shown = cli(server, "host", "show", "h1")
    assert shown.returncode == 0 and "libvirt 9." in shown.stdout, shown
    doctor = cli(server, "doctor", "--hosts", "--json", "--data-dir", str(tmp_path / "d"))
    assert {h["name"] for h in json.loads(doctor.stdout)["hosts"]} == {"local", "h1", "h2"}


async def _add_twice(server: Server, host: LibvirtHost) -> list[httpx.Response]:
    body = {"name": host.name, "uri": host.uri.split("?")[0], "tls_cert": str(host.client_pki)}
    async with server.async_client() as api:
        replies = await asyncio.gather(*(api.post("/api/hosts", json=body) for _ in range(2)))
    return sorted(replies, key=lambda r: r.status_code)


def test_a_node_on_a_named_host_boots_and_goes(
    srv: tuple[Server, str], hosts: tuple[LibvirtHost, ...]
) -> None:
    """Its serial console shows the boot from the first line; the base reaches the host once;
    stop and delete work, and the host cannot be removed while the node is there."""
    server, image = srv
    h1, _ = hosts
    pool = h1.folder("lib") / "virtlab"
    with server.client() as api:
        node = make_node(api, image, "on-h1", host="h1")
        assert node["host"] == "h1" and node["state"] == "stopped"
        bases = {p.name: p.stat().st_mtime_ns for p in pool.glob("base-*")}
        assert bases, "the first node on a host pushes its base there"
        other = make_node(api, image, "on-h1b", host="h1")
        assert {p.name: p.stat().st_mtime_ns for p in pool.glob("base-*")} == bases, "reused"
        assert _act(api, node, "start")["state"] == "running"
        boot = _boot_log(server, node)
        assert b"SYSLINUX" in boot, boot[:300]
        assert h1.qemu_pids(), "it runs on the host, under its libvirtd"

        detail = refused(api.delete("/api/hosts/h1"), 409, "on-h1", "on-h1b", "host drain h1")
        assert "2 node(s)" in detail
        stopped = _act(api, node, "stop", timeout=60)
        assert stopped["state"] == "stopped", stopped
        assert not h1.qemu_pids()
        for made in (node, other):
            assert api.delete(f"/api/nodes/{made['id']}").status_code == 204
        assert not list(pool.glob("node-*")), "their disk volumes are gone from the host"


def test_placement_spreads_refuses_without_room_and_skips_drained_hosts(
    srv: tuple[Server, str],
) -> None:
    server, image = srv
    with server.client() as api:
        for i in range(3):  # spread: each to the host with the most room
            rooms = {h["name"]: h["room_mb"] for h in api.get("/api/hosts").json()}
            assert make_node(api, image, f"p{i}")["host"] == max(rooms, key=rooms.__getitem__)
            after = {h["name"]: h["room_mb"] for h in api.get("/api/hosts").json()}
            assert sum(rooms.values()) - sum(after.values()) == 128, "its RAM is promised"
        too_big = api.post("/api/nodes", json={"name": "big", "image": image, "ram_mb": 1 << 20})
        refused(too_big, 409, "no host has room for node big", "h1", "virtlab host add")
        assert all(n["name"] != "big" for n in api.get("/api/nodes").json()), "nothing kept"

        assert api.post("/api/hosts/h1/drain", json={}).json()["drained"]
        assert cli(server, "host", "drain", "h2").returncode == 0
        assert [make_node(api, image, f"q{i}")["host"] for i in range(2)] == ["local", "local"]
        refused(api.post("/api/nodes", json={"name": "q9", "image": image, "host": "h1"}),
                 409, "host h1 is drained")  # fmt: skip
        refused(api.post("/api/nodes", json={"name": "q9", "image": image, "host": "h7"}),
                 404, "no host 'h7'")  # fmt: skip
        assert cli(server, "host", "drain", "h2", "--undo").returncode == 0
        api.post("/api/hosts/h1/drain", json={"drained": False})
        for node in api.get("/api/nodes").json():
            assert api.delete(f"/api/nodes/{node['id']}").status_code == 204
        assert {h["name"]: h["nodes"] for h in api.get("/api/hosts").json()} == {
            "local": 0, "h1": 0, "h2": 0,
        }  # fmt: skip


def test_a_host_that_stops_answering_makes_its_nodes_unknown_until_it_is_back(
    srv: tuple[Server, str], hosts: tuple[LibvirtHost, ...]
) -> None:
    server, image = srv
    _, h2 = hosts
    with server.client() as api:
        a = make_node(api, image, "u1", host="h1")
        b = make_node(api, image, "u2", host="h2")
        for node in (a, b):
            assert _act(api, node, "start")["state"] == "running"

    watch(server, h2.stop_daemon, node_is("u2", "unknown"))
    with server.client() as api:
        assert api.get(f"/api/nodes/{b['id']}").json()["state"] == "unknown"
        refused(api.post(f"/api/nodes/{b['id']}/stop"), 409, "its host does not answer")
        host = api.get("/api/hosts/h2").json()
        assert not host["reachable"] and host["reason"]
        assert api.get(f"/api/nodes/{a['id']}").json()["state"] == "running", "h1 runs on"
        assert _act(api, a, "suspend")["state"] == "suspended"
        assert _act(api, a, "resume")["state"] == "running"

    watch(server, h2.start_daemon, node_is("u2", "running"))
    with server.client() as api:
        assert api.get("/api/hosts/h2").json()["reachable"]
        for node in (a, b):
            stopped = _act(api, node, "kill")
            assert stopped["state"] == "stopped", stopped
            assert api.delete(f"/api/nodes/{node['id']}").status_code == 204


LAB = """
name: across
topology:
  defaults: {image: IMAGE, ram_mb: 128, nics: 2}
  nodes:
    a: {host: h1}
    b: {host: h2}
    c: {host: h1}
  links:
    - endpoints: ["a:eth0", "b:eth0"]
    - endpoints: ["a:eth1", "c:eth0"]
"""


def test_a_lab_across_two_hosts_pings_over_udp_tunnels(srv: tuple[Server, str]) -> None:
    """a on h1 pings b on h2 (a tunnel between the hosts' addresses) and c on h1 (a tunnel on
    one host); link down/up is live; re-cabling a running node and capturing are refused."""
    server, image = srv
    with server.client(timeout=600) as api:
        body = {"topology": LAB.replace("IMAGE", image), "start": True}
        made = api.post("/api/labs", json=body)
        assert made.status_code == 201, made.text
        lab = api.get("/api/labs/across").json()
        nodes = {n["name"]: n for n in lab["node_list"]}
        assert {n: nodes[n]["host"] for n in nodes} == {"a": "h1", "b": "h2", "c": "h1"}
        assert {n["state"] for n in nodes.values()} == {"running"}
        links = {
            (x["a"], x["b"]): x for x in api.get("/api/links", params={"lab": "across"}).json()
        }
        ab = links[("a:eth0", "b:eth0")]

    async def ping() -> None:
        a, b, c = [await SerialShell.open(server, nodes[n]) for n in ("a", "b", "c")]
        for shell, commands in (
            (a, ["ip addr add 10.0.1.1/24 dev eth0", "ip addr add 10.0.2.1/24 dev eth1",
                 "ip link set eth0 up", "ip link set eth1 up"]),
            (b, ["ip addr add 10.0.1.2/24 dev eth0", "ip link set eth0 up"]),
            (c, ["ip addr add 10.0.2.2/24 dev eth0", "ip link set eth0 up"]),
        ):  # fmt: skip
            for command in commands:
                status, output = await shell.run(command)
                assert status == 0, (command, output)
        status, output = await a.run("ping -c 3 -W 2 10.0.1.2", timeout=120)
        assert status == 0, f"a on h1 pings b on h2: {output}"
        status, output = await a.run("ping -c 3 -W 2 10.0.2.2", timeout=120)
        assert status == 0, f"a pings c on the same host: {output}"
        async with server.async_client() as client:
            down = await client.patch(f"/api/links/{ab['id']}", json={"state": "down"})
            assert down.status_code == 200, down.text
            status, _ = await a.run("ping -c 2 -W 1 10.0.1.2", timeout=120)
            assert status != 0, "the link is down"
            up = await client.patch(f"/api/links/{ab['id']}", json={"state": "up"})
            assert up.status_code == 200, up.text
        status, output = await a.run("ping -c 3 -W 2 10.0.1.2", timeout=120)
        assert status == 0, f"and up again: {output}"
        for shell in (a, b, c):
            await shell.close()

    asyncio.run(ping())
    with server.client(timeout=600) as api:
        more = api.post("/api/links", json={"lab": "across", "a": "b:eth1", "b": "c:eth1"})
        refused(more, 409, "cannot add a link to b and c now", "stop b and c")
        refused(api.post(f"/api/links/{ab['id']}/capture/start"), 409, "cannot be captured")
        assert not api.get(f"/api/links/{ab['id']}").json()["capturing"], "nothing changed"
        local = make_node(api, image, "loc", host="local", lab="across")
        cross = api.post("/api/links", json={"lab": "across", "a": "loc:eth0", "b": "b:eth1"})
        refused(cross, 409, "cannot add a link to b now", "stop b, add the link")
        assert api.delete(f"/api/nodes/{local['id']}").status_code == 204
        assert api.delete("/api/labs/across").status_code == 204


def test_a_server_that_starts_while_a_host_is_down_adopts_its_nodes_when_it_answers(
    srv: tuple[Server, str], hosts: tuple[LibvirtHost, ...]
) -> None:
    """Last in the module: it restarts the module's server."""
    server, image = srv
    _, h2 = hosts
    with server.client() as api:
        node = make_node(api, image, "rs1", host="h2")
        assert _act(api, node, "start")["state"] == "running"
        # booted before the server goes: what it printed is in the scrollback it keeps
        assert _boot_log(server, node)
    server.stop()
    h2.stop_daemon()
    server.start()
    with server.client() as api:
        assert api.get(f"/api/nodes/{node['id']}").json()["state"] == "unknown"
        host = api.get("/api/hosts/h2").json()
        assert not host["reachable"] and "cannot connect to host h2" in host["reason"], host
        assert api.get("/api/hosts/h1").json()["reachable"]
    watch(server, h2.start_daemon, node_is("rs1", "running"))
    with server.client() as api:
        boot = _boot_log(server, node)
        assert boot, "its console is back, scrollback included"
        assert _act(api, node, "kill")["state"] == "stopped"
        assert api.delete(f"/api/nodes/{node['id']}").status_code == 204
