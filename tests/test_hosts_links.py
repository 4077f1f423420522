"""Links through the server's relay to nodes on libvirt hosts, with a real ``virtlab serve``, two
real libvirtd "hosts" on 127.0.0.1 and real TCG guests booting the test disk.

A local node and a node on h1 ping through the relay (down/up, capture, delay, a server
restart); two nodes on h1 and h2 ping over a link added ``--relayed`` and over a direct tunnel
that is refused a capture while they run and switches to the relay once they are stopped. The
refusals without a relay address run in-process on a real catalog: a libvirt host on a
non-loopback address cannot be made here (the test daemons listen on 127.0.0.1 only).
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import struct
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

pytest.importorskip(
    "libvirt", reason="libvirt-python is not installed: pip install -e '.[libvirt]'"
)

from support.console import SerialShell
from support.hosts_server import cli, hosts_server, libvirt_hosts, needs_libvirtd, refused
from support.libvirt_hosts import LibvirtHost
from support.server import Server
from virtlab.catalog import NodeRecord, NodeRepository
from virtlab.catalog.hosts import HostRecord, HostRepository
from virtlab.catalog.labs import LinkRepository
from virtlab.devtools.bootdisk import BOOT_MARKER
from virtlab.errors import Conflict
from virtlab.runtime import Runtime
from virtlab.settings import Settings

pytestmark = needs_libvirtd


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[LibvirtHost, ...]]:
    with libvirt_hosts("vhl-", "h1", "h2") as started:
        yield started


@pytest.fixture(scope="module")
def srv(
    hosts: tuple[LibvirtHost, ...], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, str]]:
    """A server (relay address unset: the hosts are on 127.0.0.1) with the boot disk, h1, h2.
    UDP port ranges of its own, away from other servers on this machine."""
    base = random.randrange(20000, 30000, 200)
    env = {
        "VIRTLAB_TUNNEL_PORTS": f"{base}-{base + 99}",
        "VIRTLAB_RELAY_PORTS": f"{base + 100}-{base + 199}",
    }
    with hosts_server(tmp_path_factory, hosts, env=env) as (server, image):
        yield server, image


def _ok(reply: httpx.Response, status: int = 200) -> dict:
    assert reply.status_code == status, reply.text
    return reply.json() if reply.content else {}


def _lab(api: httpx.Client, text: str) -> tuple[dict[str, dict], dict[tuple[str, str], dict]]:
    """Deploy a lab (stopped); its nodes by name and its links by endpoints."""
    _ok(api.post("/api/labs", json={"topology": text, "start": False}), 201)
    return _read_lab(api, re.search(r"name: (\S+)", text)[1])  # type: ignore[index]


def _read_lab(api: httpx.Client, name: str) -> tuple[dict, dict]:
    lab = _ok(api.get(f"/api/labs/{name}"))
    nodes = {n["name"]: n for n in lab["node_list"]}
    return nodes, {(x["a"], x["b"]): x for x in lab["link_list"]}


def _start(api: httpx.Client, *nodes: dict) -> None:
    for node in nodes:
        assert _ok(api.post(f"/api/nodes/{node['id']}/start"))["state"] == "running"


def _stop(api: httpx.Client, *nodes: dict) -> None:
    for node in nodes:
        stopped = _ok(api.post(f"/api/nodes/{node['id']}/kill"))
        assert stopped["state"] == "stopped", stopped


async def _shells(
    server: Server, nodes: dict[str, dict], setup: dict[str, list[str]], boot: int = 1
) -> dict:
    """Shells on booted nodes, set up; ``boot``: which boot (the scrollback keeps earlier ones)."""
    shells = {}
    for name, commands in setup.items():
        shells[name] = shell = await SerialShell.open(server, nodes[name])
        for _ in range(boot - 1):
            await shell.wait_for(BOOT_MARKER.encode(), 120)
        await shell.wait_for(rb"~# ", 60)  # what is typed before the shell reads may be lost
        for command in commands:
            status, output = await shell.run(command)
            assert status == 0, (name, command, output)
    return shells


async def _ping(shell: SerialShell, address: str, count: int = 3) -> tuple[int, str]:
    return await shell.run(f"ping -c {count} -W 2 {address}", timeout=120)


def _icmp(pcap: bytes) -> list[tuple[str, str, int]]:
    """(source, destination, ICMP type) of every IPv4 ICMP frame of a classic pcap file."""
    out, at = [], 24
    while at + 16 <= len(pcap):
        incl = struct.unpack_from("<I", pcap, at + 8)[0]
        if at + 16 + incl > len(pcap):
            break  # a live stream's last record, not all read yet
        frame = pcap[at + 16 : at + 16 + incl]
        at += 16 + incl
        if frame[12:14] == b"\x08\x00" and frame[23] == 1:
            src, dst = frame[26:30], frame[30:34]
            ihl = (frame[14] & 0x0F) * 4
            out.append((".".join(map(str, src)), ".".join(map(str, dst)), frame[14 + ihl]))
    return out


def _capture(api: httpx.Client, link: dict) -> bytes:
    reply = api.get(f"/api/links/{link['id']}/capture")
    assert reply.status_code == 200, reply.text
    return reply.content


PAIR = """
name: {lab}
topology:
  defaults: {{image: {image}, ram_mb: 128, nics: {nics}}}
  nodes:
    {a}: {{host: {a_host}}}
    {b}: {{host: {b_host}}}
  links:
    - endpoints: ["{a}:eth{last}", "{b}:eth{last}"]
"""


def _pair(lab: str, image: str, a: str, b: str, *, nics: int = 1, relayed: bool = False) -> str:
    """A lab file of two nodes, ``a`` and ``b`` as ``name@host``, linked on their last NIC."""
    (a, a_host), (b, b_host) = a.split("@"), b.split("@")
    text = PAIR.format(lab=lab, image=image, nics=nics, last=nics - 1, a=a, a_host=a_host, b=b,
                       b_host=b_host)  # fmt: skip
    return text + ("      relayed: true\n" if relayed else "")


def test_a_local_node_pings_a_node_on_a_libvirt_host_through_the_relay(
    srv: tuple[Server, str],
) -> None:
    """Down/up, a capture with the ICMP frames, a delay in the RTT, and a server restart."""
    server, image = srv
    with server.client(timeout=600) as api:
        text = _pair("mixed", image, "loc@local", "rem@h1")
        nodes, links = _lab(api, text)
        link = links[("loc:eth0", "rem:eth0")]
        assert (link["path"], link["relayed"]) == ("relayed", True), link
        assert nodes["rem"]["host"] == "h1" and nodes["loc"]["host"] == "local"
        for again in (text, _pair("mixed", image, "loc@local", "rem@h1", relayed=True)):
            same = api.post("/api/labs", json={"topology": again, "start": False})
            assert same.status_code == 200, f"the same lab, relayed or not: {same.text}"
        _start(api, nodes["loc"], nodes["rem"])
    url = f"/api/links/{link['id']}"

    async def run() -> None:
        shells = await _shells(server, nodes, {
            "loc": ["ip addr add 10.0.3.1/24 dev eth0", "ip link set eth0 up"],
            "rem": ["ip addr add 10.0.3.2/24 dev eth0", "ip link set eth0 up"],
        })  # fmt: skip
        loc = shells["loc"]
        status, output = await _ping(loc, "10.0.3.2")
        assert status == 0, f"the local node reaches the one on h1: {output}"
        async with server.async_client() as api:
            _ok(await api.patch(url, json={"state": "down"}))
            status, _ = await _ping(loc, "10.0.3.2", 2)
            assert status != 0, "the link is down"
            _ok(await api.patch(url, json={"state": "up"}))
            status, output = await _ping(loc, "10.0.3.2")
            assert status == 0, f"and up again: {output}"

            started = _ok(await api.post(f"{url}/capture/start"))
            assert started["capturing"] and started["path"] == "relayed"
            status, output = await _ping(loc, "10.0.3.2")
            assert status == 0, output
            _ok(await api.post(f"{url}/capture/stop"))

            async with api.stream("GET", f"{url}/capture/stream") as live:
                status, output = await _ping(loc, "10.0.3.2", 2)
                assert status == 0, output
                seen = b""
                async for chunk in live.aiter_bytes():
                    seen += chunk
                    if ("10.0.3.2", "10.0.3.1", 0) in _icmp(seen):
                        break  # the live stream shows the replies too
            assert seen.startswith(bytes.fromhex("d4c3b2a1")), "a pcap stream"

            delay = {"impairment": {"a_to_b": {"delay_ms": 300}}}
            assert _ok(await api.patch(url, json=delay))["impairment"]["a_to_b"]["delay_ms"] == 300
            status, output = await _ping(loc, "10.0.3.2")
            assert status == 0, output
            rtts = [float(t) for t in re.findall(r"time=([\d.]+) ms", output)]
            assert len(rtts) == 3 and min(rtts) >= 300, output
            _ok(await api.patch(url, json={"impairment": {}}))
        for shell in shells.values():
            await shell.close()

    asyncio.run(run())
    with server.client() as api:
        frames = _icmp(_capture(api, link))
        assert ("10.0.3.1", "10.0.3.2", 8) in frames, "echo requests, loc to rem"
        assert ("10.0.3.2", "10.0.3.1", 0) in frames, "echo replies, rem to loc"
        assert len(frames) >= 6, frames

    server.stop()  # the nodes run on; the relay comes back with the server
    server.start()

    async def after_restart() -> None:
        loc = await SerialShell.open(server, nodes["loc"], booted=False)
        status, output = await _ping(loc, "10.0.3.2")
        assert status == 0, f"the bridge is back after the restart: {output}"
        await loc.close()

    asyncio.run(after_restart())
    with server.client(timeout=600) as api:
        assert _ok(api.get(url))["path"] == "relayed"
        assert api.delete("/api/labs/mixed").status_code == 204


def test_links_between_two_hosts_go_relayed_when_asked_or_once_stopped(
    srv: tuple[Server, str],
) -> None:
    """eth0 is added --relayed and captured live; eth1 goes straight between the hosts: its
    capture is refused while they run (nothing changes) and moves it to the relay once they
    are stopped, from their next start."""
    server, image = srv
    with server.client(timeout=600) as api:
        nodes, links = _lab(api, _pair("across", image, "x@h1", "y@h2", nics=2))
        added = cli(server, "link", "add", "x:eth0", "y:eth0", "--lab", "across", "--relayed")
        assert added.returncode == 0 and "relayed" in added.stdout, added.stderr
        nodes, links = _read_lab(api, "across")
        relayed, direct = links[("x:eth0", "y:eth0")], links[("x:eth1", "y:eth1")]
        assert (relayed["path"], direct["path"]) == ("relayed", "tunnel")
        exported = api.get("/api/labs/across/export").text
        assert "relayed: true" in exported
        yaml = {"content-type": "application/yaml"}
        same = api.post("/api/labs", content=exported, headers=yaml, params={"start": False})
        assert same.status_code == 200, f"its export deploys as the same lab: {same.text}"
        changed = exported.replace("relayed: true", "relayed: false")
        other = api.post("/api/labs", content=changed, headers=yaml, params={"start": False})
        refused(other, 409, "differs from this file")
        shown = cli(server, "lab", "inspect", "across")
        assert re.search(r"x:eth1\W+y:eth1\W+up\W+tunnel", shown.stdout), shown.stdout
        _start(api, nodes["x"], nodes["y"])
        _ok(api.post(f"/api/links/{relayed['id']}/capture/start"))

    setup = {
        "x": ["ip addr add 10.0.1.1/24 dev eth0", "ip addr add 10.0.2.1/24 dev eth1",
              "ip link set eth0 up", "ip link set eth1 up"],
        "y": ["ip addr add 10.0.1.2/24 dev eth0", "ip addr add 10.0.2.2/24 dev eth1",
              "ip link set eth0 up", "ip link set eth1 up"],
    }  # fmt: skip

    async def pings(*targets: str, boot: int = 1) -> None:
        shells = await _shells(server, nodes, setup, boot)
        for target in targets:
            status, output = await _ping(shells["x"], target)
            assert status == 0, f"x on h1 reaches {target} on h2: {output}"
        for shell in shells.values():
            await shell.close()

    asyncio.run(pings("10.0.1.2", "10.0.2.2"))
    with server.client(timeout=600) as api:
        _ok(api.post(f"/api/links/{relayed['id']}/capture/stop"))
        assert ("10.0.1.1", "10.0.1.2", 8) in _icmp(_capture(api, relayed))
        assert ("10.0.1.2", "10.0.1.1", 0) in _icmp(_capture(api, relayed))

        url = f"/api/links/{direct['id']}"
        refused(api.post(f"{url}/capture/start"), 409, "cannot be captured now",
                 "straight from host h1 to host h2", "stop x and y", "--relayed")  # fmt: skip
        refused(api.patch(url, json={"impairment": {"a_to_b": {"loss_pct": 5}}}), 409,
                 "cannot be impaired now", "stop x and y")  # fmt: skip
        after = _ok(api.get(url))
        assert (after["path"], after["capturing"], after["impairment"]) == ("tunnel", False, {})
        refused(api.get(f"{url}/capture"), 404, "no capture yet")

        _stop(api, nodes["x"])
        refused(api.post(f"{url}/capture/start"), 409, "stop y and try again")
        _stop(api, nodes["y"])
        switched = _ok(api.post(f"{url}/capture/start"))
        assert (switched["path"], switched["capturing"]) == ("relayed", True), switched
        _start(api, nodes["x"], nodes["y"])

    asyncio.run(pings("10.0.2.2", boot=2))
    with server.client(timeout=600) as api:
        _ok(api.post(f"{url}/capture/stop"))
        frames = _icmp(_capture(api, direct))
        assert ("10.0.2.1", "10.0.2.2", 8) in frames and ("10.0.2.2", "10.0.2.1", 0) in frames
        assert _ok(api.get(url))["path"] == "relayed", "it stays relayed"
        assert api.delete("/api/labs/across").status_code == 204


# -- refusals without a relay address: in-process, on a real catalog -----------------------------


def _runtime(data: Path, **settings: object) -> Runtime:
    runtime = Runtime.build(Settings(data_dir=data, **settings))  # type: ignore[arg-type]
    data.mkdir(parents=True, exist_ok=True)
    runtime.catalog.migrate()
    now = datetime.now(UTC)
    with runtime.catalog.session() as session:
        HostRepository(session).add(HostRecord(
            "far", "qemu+tls://far.example/system", "up", now, {"address": "192.0.2.10"}
        ))  # fmt: skip
        nodes = NodeRepository(session)
        for name, host in (("n1", "local"), ("n2", "far"), ("n3", "far")):
            nodes.add(NodeRecord(
                id=f"{name}000000000", name=name, image="boot.img", cpus=1, ram_mb=128,
                disk_bus="virtio", nics=1, nic_model="virtio-net-pci", serial=True, vnc=False,
                state="stopped", created_at=now, host=host,
            ))  # fmt: skip
    (runtime.settings.nodes_dir / "n1000000000").mkdir(parents=True)
    return runtime


def _no_links(runtime: Runtime) -> None:
    with runtime.catalog.session() as session:
        assert LinkRepository(session).list() == [], "no link was kept"
    assert not list((runtime.settings.data_dir / "links").glob("*/*")), "no relay socket"
    assert not (runtime.settings.nodes_dir / "n1000000000" / "nic0.peer").exists()


def test_links_through_the_server_to_a_non_loopback_host_need_the_relay_address(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        runtime = _runtime(tmp_path / "d1")
        links = runtime.links
        with pytest.raises(Conflict) as refused:
            await links.add("default", "n1:eth0", "n2:eth0")
        assert "set VIRTLAB_RELAY_ADDRESS" in str(refused.value)
        assert "host far, 192.0.2.10" in str(refused.value)
        _no_links(runtime)
        with pytest.raises(Conflict, match=r"VIRTLAB_RELAY_ADDRESS.*without relayed"):
            await links.add("default", "n2:eth0", "n3:eth0", relayed=True)
        _no_links(runtime)

        direct = await links.add("default", "n2:eth0", "n3:eth0")
        assert links.path(direct) == "tunnel"
        with pytest.raises(Conflict, match="set VIRTLAB_RELAY_ADDRESS"):
            await links.start_capture(direct.id)
        kept = links.get(direct.id)
        assert (kept.capturing, kept.via_server, links.path(kept)) == (False, False, "tunnel")
        await links.remove(direct.id)

        # set, but not an address of this machine: the relay cannot listen, nothing is kept
        runtime = _runtime(tmp_path / "d2", relay_address="192.0.2.1")
        with pytest.raises(Conflict, match=r"192\.0\.2\.1 is not an address of this server"):
            await runtime.links.add("default", "n1:eth0", "n2:eth0")
        _no_links(runtime)

    asyncio.run(run())
    with pytest.raises(ValueError, match="VIRTLAB_RELAY_ADDRESS is an IP address"):
        Settings(relay_address="server.example")
    overlapping = Settings(tunnel_ports="40000-40999", relay_ports="40900-41100")
    with pytest.raises(ValueError, match=r"VIRTLAB_RELAY_PORTS .* overlaps VIRTLAB_TUNNEL_PORTS"):
        overlapping.check_udp_ports()
    Settings().check_udp_ports()  # the defaults are apart


def test_with_tunnels_via_server_new_links_between_hosts_are_relayed(tmp_path: Path) -> None:
    """VIRTLAB_TUNNELS_VIA_SERVER=1: a link between two stopped nodes on a (loopback) host gets
    the server's ports and a relay at once, bound on 127.0.0.1; removing it lets them go."""
    base = random.randrange(30000, 32000, 10)

    async def run() -> None:
        runtime = _runtime(
            tmp_path / "d", tunnels_via_server=True, relay_ports=f"{base}-{base + 9}"
        )
        with runtime.catalog.session() as session:
            HostRepository(session).update("far", facts={"address": "127.0.0.1"})
        links = runtime.links
        link = await links.add("default", "n2:eth0", "n3:eth0")
        assert links.path(link) == "relayed"
        assert (link.a_relay_port, link.b_relay_port) == (base, base + 1)
        relay = links.relay(link.id)
        assert relay is not None and relay.running
        n2 = runtime.nodes.get("n2000000000")
        tunnel = links.tunnels.of(n2)[0]  # type: ignore[union-attr]
        assert (tunnel.remote_host, tunnel.remote_port) == ("127.0.0.1", base)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe, pytest.raises(OSError):
            probe.bind(("127.0.0.1", base))  # the relay listens there
        await links.remove(link.id)
        assert links.relay(link.id) is None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", base))

        # without the setting: a link made impaired goes through the server too
        runtime = _runtime(tmp_path / "d2", relay_ports=f"{base}-{base + 9}")
        with runtime.catalog.session() as session:
            HostRepository(session).update("far", facts={"address": "127.0.0.1"})
        plain = await runtime.links.add("default", "n2:eth0", "n3:eth0")
        assert runtime.links.path(plain) == "tunnel"
        await runtime.links.remove(plain.id)
        slow = {"a_to_b": {"delay_ms": 50}}
        impaired = await runtime.links.add("default", "n2:eth0", "n3:eth0", impairment=slow)
        assert runtime.links.path(impaired) == "relayed" and impaired.a_relay_port == base
        assert runtime.links.relay(impaired.id).impairment("a_to_b").delay_ms == 50  # type: ignore[union-attr]
        await runtime.links.close()

    asyncio.run(run())
