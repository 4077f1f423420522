"""What a node is, as frozen values: the input of the QEMU command-line builder.

Nothing here touches the host. ``NodeSpec`` is built by the node service from the catalog and
validated settings; ``virtlab.nodes.qemu.argv`` turns it into an argument list.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "LOCAL_HOST",
    "Accel",
    "DiskBus",
    "Forward",
    "NicModel",
    "NicSpec",
    "NodeSpec",
    "RunPaths",
    "UdpTunnel",
    "UserNet",
]


LOCAL_HOST = "local"  # the host the server runs on: nodes there use the direct QEMU driver


class DiskBus(enum.StrEnum):
    VIRTIO = "virtio"
    IDE = "ide"
    SATA = "sata"
    SCSI = "scsi"


class NicModel(enum.StrEnum):
    VIRTIO = "virtio-net-pci"
    E1000 = "e1000"
    RTL8139 = "rtl8139"
    VMXNET3 = "vmxnet3"


class Accel(enum.StrEnum):
    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True)
class UdpTunnel:
    """One end of a link: this NIC's frames go to ``remote`` and arrive on ``local``."""

    local_host: str
    local_port: int
    remote_host: str
    remote_port: int


@dataclass(frozen=True)
class Forward:
    """``127.0.0.1:host_port`` on the host reaches ``guest_port`` in the guest."""

    proto: str  # tcp | udp
    host_port: int
    guest_port: int


@dataclass(frozen=True)
class UserNet:
    """QEMU user-mode networking on a NIC (a NAT node's link, or a management interface).
    ``restrict``: the guest reaches nothing through the host (no DNS, no routing); only the
    forwards, which listen on 127.0.0.1, reach the guest."""

    forwards: tuple[Forward, ...] = ()
    restrict: bool = True


@dataclass(frozen=True)
class NicSpec:
    index: int  # eth<index>
    model: NicModel
    mac: str  # "52:54:00:xx:xx:xx", stable per node
    tunnel: UdpTunnel | None = None  # None: a NIC with no cable plugged in
    user: UserNet | None = None  # user-mode networking instead of a cable


@dataclass(frozen=True)
class RunPaths:
    """Where a node's runtime files live: all inside its own directory."""

    root: Path

    @property
    def disk(self) -> Path:
        return self.root / "disk.qcow2"

    @property
    def pidfile(self) -> Path:
        return self.root / "qemu.pid"

    @property
    def qmp(self) -> Path:
        return self.root / "qmp.sock"

    @property
    def serial(self) -> Path:
        return self.root / "serial.sock"

    @property
    def vnc(self) -> Path:
        return self.root / "vnc.sock"

    @property
    def log(self) -> Path:
        return self.root / "qemu.log"


@dataclass(frozen=True)
class NodeSpec:
    """Everything needed to start one node's QEMU."""

    id: str  # stable, filesystem-safe (hex)
    name: str  # validated: [A-Za-z0-9][A-Za-z0-9_.-]{0,62}
    paths: RunPaths
    accel: Accel = Accel.TCG
    cpus: int = 1
    ram_mb: int = 256
    disk_bus: DiskBus = DiskBus.VIRTIO
    cdrom: Path | None = None  # an ISO from the catalog, booted first when present
    nics: tuple[NicSpec, ...] = ()
    machine: str = "pc"
    serial: bool = True
    vnc: bool = True
    uuid: str | None = None
    extra_args: tuple[str, ...] = field(default=())  # already checked against the allow-list
    cpu_model: str | None = None  # None: "host" under KVM, "qemu64" under TCG
    start_paused: bool = False  # -S: wait for QMP "cont" (lets a console hub see the first byte)
    loadvm: str | None = None  # -loadvm: start from this checkpoint in the disk, not a boot
    host: str = LOCAL_HOST  # where it runs: this machine's QEMU, or a libvirt host by name
