"""Two real guests (TCG) with one NIC each, wired the way virtlab wires nodes, for link tests.

::

    with start_pair(boot_disk(tmp_path_factory), root) as (a, b):
        connect_direct(a.endpoint, b.endpoint)
        assert a.ping(b.ip).ok

Each guest's eth0 is built by :func:`virtlab.nodes.qemu.argv.nic_args` from a ``NicSpec``, so
it is the production ``-netdev dgram`` on unix sockets in the guest's node directory
(``ROOT/A/nic0.sock``, peer ``ROOT/A/nic0.peer``) with QOM id ``nic0`` for QMP ``set_link``.
Addresses are typed on the serial shells. Both guests boot at the same time.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from support.guest import Guest
from virtlab.devtools.bootdisk import BOOT_MARKER
from virtlab.links import Endpoint
from virtlab.nodes.qemu.argv import nic_args, nic_device_id
from virtlab.nodes.spec import NicModel, NicSpec, NodeSpec, RunPaths

__all__ = ["NetGuest", "Ping", "start_pair"]

_RTT = re.compile(r"time=([0-9.]+) ms")
_RECEIVED = re.compile(r"(\d+) packets received")


@dataclass(frozen=True)
class Ping:
    output: str
    status: int

    @property
    def ok(self) -> bool:
        return self.status == 0

    @property
    def received(self) -> int:
        found = _RECEIVED.search(self.output)
        return int(found.group(1)) if found else 0

    @property
    def rtts_ms(self) -> list[float]:
        return [float(ms) for ms in _RTT.findall(self.output)]


@dataclass
class NetGuest:
    name: str
    guest: Guest
    endpoint: Endpoint  # eth0
    ip: str

    def ping(self, ip: str, count: int = 3, wait_s: int = 2) -> Ping:
        """``ping -c count -W wait_s ip`` on the serial shell (busybox ping)."""
        out = self.guest.run(f"ping -c {count} -W {wait_s} {ip}; echo __rc=$?", timeout=120)
        status = int(out.rsplit("__rc=", 1)[1].split()[0])
        return Ping(out, status)

    def set_link(self, up: bool) -> None:
        """QMP ``set_link`` on eth0: the cable's carrier, as the guest sees it."""
        self.guest.qmp("set_link", name=nic_device_id(self.endpoint.index), up=up)


@contextlib.contextmanager
def start_pair(
    disk: Path, root: Path, memory_mib: int = 128
) -> Iterator[tuple[NetGuest, NetGuest]]:
    """Boot A (10.0.0.1/24) and B (10.0.0.2/24); stop both (by pid) on leaving."""
    plan = [("A", "52:54:00:00:0a:01", "10.0.0.1"), ("B", "52:54:00:00:0a:02", "10.0.0.2")]
    guests: list[NetGuest] = []
    try:
        for name, mac, ip in plan:
            node_dir = root / name
            node_dir.mkdir()
            spec = NodeSpec(
                id=name.lower() * 32,
                name=name,
                paths=RunPaths(node_dir),
                nics=(NicSpec(0, NicModel.VIRTIO, mac),),
            )
            guest = Guest.start(
                disk, bus="virtio", memory_mib=memory_mib, qmp=True, extra_args=nic_args(spec)
            )
            guests.append(NetGuest(name, guest, Endpoint(node_dir, 0), ip))
        for g in guests:
            g.guest.wait_for(BOOT_MARKER, timeout=120)
            g.guest.run(f"ip addr add {g.ip}/24 dev eth0 && ip link set eth0 up")
        yield guests[0], guests[1]
    finally:
        for g in guests:
            g.guest.stop()
