"""Two libvirt "hosts" on 127.0.0.1: image push, a lab across them, and hosts that go away.

``h1`` listens on plain TCP, ``h2`` on TLS with a client-certificate allow-list; each is a
libvirtd in its own mount namespace (``tests/support/libvirt_hosts.py``). Guests are the tiny
test disk at 128 MB under TCG, typed on through their serial consoles, which come through
libvirt's console stream into the same :class:`SerialHub` the server uses.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import re
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

libvirt = pytest.importorskip(
    "libvirt", reason="libvirt-python is not installed: pip install -e '.[libvirt]'"
)

from support.bootdisk import boot_disk  # noqa: E402
from support.fake_peers import short_dir  # noqa: E402
from support.libvirt_hosts import LibvirtHost, have_libvirtd, make_client_pki  # noqa: E402
from support.qimg import convert  # noqa: E402
from virtlab.consoles import SerialHub, Subscription  # noqa: E402
from virtlab.devtools.bootdisk import BOOT_MARKER  # noqa: E402
from virtlab.hosts.connection import HostConnection  # noqa: E402
from virtlab.hosts.driver import LibvirtDriver  # noqa: E402
from virtlab.hosts.errors import HostUnreachable  # noqa: E402
from virtlab.hosts.volumes import HostStorage  # noqa: E402
from virtlab.nodes.spec import Accel, NicModel, NicSpec, NodeSpec, RunPaths, UdpTunnel  # noqa: E402
from virtlab.nodes.state import NodeState  # noqa: E402

NEEDS = "apt-get install libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients"
pytestmark = pytest.mark.skipif(not have_libvirtd(), reason=NEEDS)
_counter = itertools.count()


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[LibvirtHost, LibvirtHost]]:
    with (
        short_dir("vlh-") as root,
        LibvirtHost.start(root / "h1") as h1,
        LibvirtHost.start(root / "h2", tls=True) as h2,
    ):
        yield h1, h2


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = boot_disk(tmp_path_factory)
    return convert(raw, tmp_path_factory.mktemp("base") / "base.qcow2", "qcow2")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- image push ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_base_is_pushed_once_checked_by_sha256_and_never_reowned(
    hosts: tuple[LibvirtHost, LibvirtHost], base: Path
) -> None:
    h1, _ = hosts
    conn = HostConnection("h1", h1.uri)
    await conn.open()
    try:
        storage = HostStorage(conn)
        pushed = await storage.push_base(base)
        assert pushed.sha256 == _sha256(base)
        on_host = h1.folder("lib") / "virtlab" / pushed.name
        assert _sha256(on_host) == pushed.sha256, "the bytes on the host are the image's"
        stat = on_host.stat()
        assert (stat.st_uid, stat.st_gid, stat.st_mode & 0o777) == (0, 0, 0o644)
        seal = on_host.with_name(pushed.name + ".sha256")
        assert seal.read_text().split() == [pushed.sha256, pushed.name]

        mtime = stat.st_mtime_ns
        assert await storage.push_base(base) == pushed
        assert on_host.stat().st_mtime_ns == mtime, "a sealed base is not pushed again"

        seal.write_text("0" * 64 + "  " + pushed.name + "\n")  # a push cut short, or tampered
        assert await storage.push_base(base) == pushed
        assert _sha256(on_host) == pushed.sha256
        assert seal.read_text().split() == [pushed.sha256, pushed.name], "sealed again"

        info = await conn.info()
        assert info.libvirt_version.startswith("9.") and "qemu" in info.accelerators
        assert info.cpus >= 1 and info.free_memory_mb > 0
    finally:
        await conn.close()


# -- TLS ----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_tls_refuses_a_client_without_an_allowed_certificate(
    hosts: tuple[LibvirtHost, LibvirtHost], tmp_path: Path
) -> None:
    _, h2 = hosts
    assert h2.pki is not None and h2.client_pki is not None
    no_cert = tmp_path / "no-cert"
    no_cert.mkdir()
    shutil.copy(h2.client_pki / "cacert.pem", no_cert / "cacert.pem")
    other = make_client_pki(h2.pki, tmp_path / "other", common_name="someone-else")
    for pki in (no_cert, other):
        uri = h2.uri.replace(str(h2.client_pki), str(pki))
        with pytest.raises(HostUnreachable, match="cannot connect to host h2"):
            await HostConnection("h2", uri, open_timeout=20).open()
    allowed = HostConnection("h2", h2.uri)
    await allowed.open()
    await allowed.close()


# -- a lab across the two hosts -----------------------------------------------------------------


@dataclass
class Node:
    """A node on a host, with its console hub and a shell typed on it."""

    driver: LibvirtDriver
    spec: NodeSpec
    ip: str
    hub: SerialHub | None = None
    output: Subscription | None = None
    seen: bytes = b""

    async def wait_for(self, pattern: bytes, timeout: float = 120) -> re.Match[bytes]:
        assert self.output is not None

        async def loop() -> re.Match[bytes]:
            while not (found := re.search(pattern, self.seen)):
                self.seen += await self.output.__anext__()  # type: ignore[union-attr]
            return found

        found = await asyncio.wait_for(loop(), timeout)
        self.seen = self.seen[found.end() :]
        return found

    async def run(self, command: str, timeout: float = 120) -> tuple[int, str]:
        """``command`` on the guest's shell: its exit status and output."""
        assert self.hub is not None
        n = next(_counter)
        await self.hub.write(f'{command}; echo "__L""{n}__" $?\r'.encode())
        found = await self.wait_for(rf"(?s)(.*?)__L{n}__ (\d+)".encode(), timeout)
        return int(found[2]), found[1].decode(errors="replace")

    async def ping(self, ip: str, count: int = 3, wait_s: int = 2) -> int:
        status, _ = await self.run(f"ping -c {count} -W {wait_s} {ip}")
        return status


@dataclass
class HostEvents:
    changes: asyncio.Queue = field(default_factory=asyncio.Queue)
    exits: list = field(default_factory=list)

    async def on_change(self, host: str, up: bool, nodes: list[str]) -> None:
        await self.changes.put((host, up, sorted(nodes)))

    async def on_exit(self, node_id: str, state: NodeState, detail: str) -> None:
        self.exits.append((node_id, state, detail))

    async def next_change(self, timeout: float = 60) -> tuple[str, bool, list[str]]:
        return await asyncio.wait_for(self.changes.get(), timeout)


async def _start(node: Node, base: Path) -> None:
    await node.driver.create_disk(node.spec, base, None)
    await node.driver.start(node.spec)  # start_paused: the hub is there before the first byte
    node.hub = SerialHub(node.spec.paths.serial)
    await node.hub.start()
    node.output = node.hub.subscribe()
    await node.driver.resume(node.spec.id)


@pytest.mark.asyncio
async def test_a_lab_across_two_hosts(
    hosts: tuple[LibvirtHost, LibvirtHost], base: Path, tmp_path: Path
) -> None:
    h1, h2 = hosts
    events = HostEvents()
    drivers = []
    for host in hosts:
        driver = await LibvirtDriver.open(host.name, host.uri, accel=Accel.TCG)
        driver.on_exit, driver.on_host_change = events.on_exit, events.on_change
        drivers.append(driver)
    pa, pb = _free_udp_port(), _free_udp_port()
    nodes = [
        Node(drivers[0], _spec(tmp_path, "a", UdpTunnel("127.0.0.1", pa, "127.0.0.1", pb)),
             "10.0.0.1"),
        Node(drivers[1], _spec(tmp_path, "b", UdpTunnel("127.0.0.1", pb, "127.0.0.1", pa)),
             "10.0.0.2"),
    ]  # fmt: skip
    a, b = nodes
    try:
        await asyncio.gather(*(_start(node, base) for node in nodes))
        for node in nodes:
            await node.wait_for(BOOT_MARKER.encode(), 180)
            assert node.hub is not None
            # syslinux prints first, before the kernel: the console has it from its first line
            assert node.hub.scrollback.lstrip().startswith(b"SYSLINUX"), node.hub.scrollback[:80]
            status, out = await node.run(
                f"ip addr add {node.ip}/24 dev eth0 && ip link set eth0 up"
            )
            assert status == 0, out

        assert await a.ping(b.ip) == 0, "A on h1 pings B on h2 across the host boundary"

        reader, writer = await asyncio.open_unix_connection(b.spec.paths.vnc)
        assert (await reader.readexactly(12)).startswith(b"RFB 003."), "VNC, proxied"
        writer.close()

        await a.driver.set_link(a.spec.id, 0, False)
        assert await a.ping(b.ip, count=2, wait_s=1) != 0, "the link is down"
        await a.driver.set_link(a.spec.id, 0, True)
        assert await a.ping(b.ip) == 0, "and up again"

        # h1's daemon restarts: A runs on, is re-adopted, and its console comes back.
        h1.stop_daemon()
        assert await events.next_change() == ("h1", False, [a.spec.id])
        assert a.driver.unknown(a.spec.id)
        h1.start_daemon()
        assert await events.next_change() == ("h1", True, [a.spec.id])
        assert not a.driver.unknown(a.spec.id)
        assert a.driver.state(a.spec.id) is NodeState.RUNNING
        assert await a.ping(b.ip) == 0, "A kept running (and its console works again)"

        # h2 stops: B is unknown, A on h1 runs on.
        h2.stop_daemon()
        assert await events.next_change() == ("h2", False, [b.spec.id])
        assert b.driver.unknown(b.spec.id) and not a.driver.unknown(a.spec.id)
        assert a.driver.state(a.spec.id) is NodeState.RUNNING
        assert (await a.run("echo still-here"))[1].strip().endswith("still-here")
        h2.start_daemon()
        assert await events.next_change() == ("h2", True, [b.spec.id])
        assert b.driver.state(b.spec.id) is NodeState.RUNNING
        assert await a.ping(b.ip) == 0, "B ran on while its host was away"
        assert events.exits == [], "nothing ended on its own"

        for host, driver in zip(hosts, drivers, strict=True):
            pushed = await driver.storage.push_base(base)
            stat = (host.folder("lib") / "virtlab" / pushed.name).stat()
            assert (stat.st_uid, stat.st_mode & 0o777) == (0, 0o644), "the base was not re-owned"
    finally:
        for node in nodes:
            if node.output is not None:
                node.output.close()
            if node.hub is not None:
                await node.hub.stop()
            if node.driver.state(node.spec.id) is not NodeState.STOPPED:
                await node.driver.kill(node.spec.id)
        for driver in drivers:
            await driver.close()


def _spec(tmp_path: Path, name: str, tunnel: UdpTunnel) -> NodeSpec:
    return NodeSpec(
        id=hashlib.sha256(f"{tmp_path}/{name}".encode()).hexdigest()[:32], name=name,
        paths=RunPaths(tmp_path / name), ram_mb=128, start_paused=True, vnc=True,
        nics=(NicSpec(0, NicModel.VIRTIO, f"52:54:00:00:0a:0{1 + (name == 'b')}", tunnel),),
    )  # fmt: skip
