"""A node's QEMU command line, built by pure functions from its frozen :class:`NodeSpec`.

Nothing here touches the host: no file is read, nothing is spawned. ``build_argv`` joins small
builders, one per concern, each tested against literal (golden) lists.

The guest's hardware does not depend on how it is watched: there is always a VGA card
(``-vga std``) and always a COM1, whether or not VNC or the serial socket are enabled, so a
guest sees the same PCI layout and the same interface names whatever its consoles. PCI slots
are fixed (disk controller in slot 4, ``nicN`` in slot 6+N) for the same reason: changing the
disk bus or adding a CD-ROM never renumbers the guest's network interfaces.

Every NIC is a ``dgram`` netdev over unix datagram sockets in the node's directory: QEMU binds
``nicN.sock`` and sends each frame to the path ``nicN.peer``. Without a cable nothing is there:
the guest sees a present NIC with its link up, frames it sends are dropped by the host kernel,
and QEMU prints no warning (a lone hub port would: "hub 0 is not connected to host network").
A link makes ``nicN.peer`` a symlink to the peer's socket, or to a relay's, while QEMU runs
(:mod:`virtlab.links.wiring`). See :func:`unplugged_nic_paths`.

Paths are escaped for QEMU's ``key=value,…`` syntax (a ``,`` becomes ``,,``); every disk and
CD-ROM is opened with ``-blockdev`` and an explicit format, so QEMU never probes one. The
overlay's format node is named ``disk0`` (snapshots and block jobs address it by that name).

A node resumed from a checkpoint gets ``-loadvm TAG`` (:func:`checkpoint_args`): QEMU rolls
the writable disk back to the checkpoint and loads its memory and devices before the guest
runs. The read-only CD-ROM holds no snapshot and is not rolled back (QEMU leaves read-only
devices out of internal snapshots); its content is the catalog's, which does not change.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from pathlib import Path

from virtlab.errors import InvalidRequest
from virtlab.nodes.checkpoints import validate_tag
from virtlab.nodes.names import validate_existing_name, validate_mac
from virtlab.nodes.qemu.extra_args import ALLOWED_EXTRA_ARGS, check_extra_args
from virtlab.nodes.spec import Accel, DiskBus, NicSpec, NodeSpec, RunPaths, UdpTunnel, UserNet

__all__ = [
    "ALLOWED_EXTRA_ARGS",
    "CDROM_NODE",
    "DEFAULT_TCG_CPU",
    "DISK_NODE",
    "MACHINE_PATTERN",
    "MAX_CPUS",
    "MAX_NICS",
    "QMP_CHARDEV",
    "QMP_FD",
    "SERIAL_CHARDEV",
    "SERIAL_FD",
    "build_argv",
    "cdrom_args",
    "check_extra_args",
    "checkpoint_args",
    "cpu_args",
    "disk_args",
    "display_args",
    "identity_args",
    "machine_args",
    "memory_args",
    "misc_args",
    "netdev_id",
    "nic_args",
    "nic_device_id",
    "process_args",
    "qmp_args",
    "serial_args",
    "unplugged_nic_paths",
    "validate_spec",
]

DISK_NODE = "disk0"  # the overlay's qcow2 node; its file node is "disk0-file"
CDROM_NODE = "cdrom0"
DISK_DEVICE = "hd0"
CDROM_DEVICE = "cd0"
SERIAL_CHARDEV = "serial0"
QMP_CHARDEV = "qmp"
# Where QEMU finds the listening sockets virtlab made for it (nodes/qemu/sockets.py).
QMP_FD, SERIAL_FD = 3, 4
DEFAULT_TCG_CPU = "qemu64"  # boots anything x86-64; "max" boots the test disk 1.5x slower
MAX_CPUS = 64
MIN_RAM_MB, MAX_RAM_MB = 16, 1 << 20
DISK_SLOT = 0x04  # PCI slot of virtio-blk / ahci / virtio-scsi
FIRST_NIC_SLOT = 0x06  # nicN sits in slot 6+N; the last free slot of bus 0 is 0x1e
MAX_NICS = 0x1E - FIRST_NIC_SLOT + 1
# Seccomp: no obsolete syscalls, no setuid & co, no fork/exec, no scheduler/affinity changes.
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

MACHINE_PATTERN = r"pc|q35|pc-(i440fx|q35)-\d+\.\d+"
_MACHINE_RE = re.compile(MACHINE_PATTERN)
_CPU_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(,[+-]?[A-Za-z0-9_.-]+(=[A-Za-z0-9_.-]+)?)*")


def _esc(value: str | Path) -> str:
    """A value for QEMU's ``key=value,…`` options: a literal comma is written ``,,``."""
    return str(value).replace(",", ",,")


# --- checks -----------------------------------------------------------------------------------


def validate_spec(spec: NodeSpec) -> None:
    """Raise :class:`InvalidRequest` if ``spec`` cannot become a safe command line."""
    validate_existing_name(spec.name)
    if not 1 <= spec.cpus <= MAX_CPUS:
        raise InvalidRequest(f"node {spec.name}: cpus must be 1 to {MAX_CPUS}, not {spec.cpus}")
    if not MIN_RAM_MB <= spec.ram_mb <= MAX_RAM_MB:
        raise InvalidRequest(
            f"node {spec.name}: ram_mb must be {MIN_RAM_MB} to {MAX_RAM_MB}, not {spec.ram_mb}"
        )
    if not _MACHINE_RE.fullmatch(spec.machine):
        raise InvalidRequest(
            f"node {spec.name}: machine {spec.machine!r} is not supported; "
            "use pc, q35, pc-i440fx-X.Y or pc-q35-X.Y"
        )
    if spec.cpu_model is not None and not _CPU_RE.fullmatch(spec.cpu_model):
        raise InvalidRequest(
            f"node {spec.name}: cpu model {spec.cpu_model!r} is not of the form "
            "MODEL[,+feature|,-feature|,prop=value…]"
        )
    if spec.uuid is not None:
        try:
            uuid.UUID(spec.uuid)
        except ValueError:
            raise InvalidRequest(f"node {spec.name}: {spec.uuid!r} is not a UUID") from None
    if spec.loadvm is not None:
        try:
            validate_tag(spec.loadvm)
        except InvalidRequest as exc:
            raise InvalidRequest(f"node {spec.name}: {exc}") from None
    indexes = [nic.index for nic in spec.nics]
    if len(set(indexes)) != len(indexes):
        raise InvalidRequest(f"node {spec.name}: NIC indexes repeat: {sorted(indexes)}")
    for nic in spec.nics:
        _validate_nic(spec.name, nic)


def _validate_nic(node: str, nic: NicSpec) -> None:
    if not 0 <= nic.index < MAX_NICS:
        raise InvalidRequest(f"node {node}: NIC index must be 0 to {MAX_NICS - 1}, not {nic.index}")
    validate_mac(nic.mac)
    if nic.user is not None:
        if nic.tunnel is not None:
            raise InvalidRequest(f"node {node}: eth{nic.index} is user-mode or a tunnel, not both")
        for forward in nic.user.forwards:
            if forward.proto not in ("tcp", "udp") or not (
                1 <= forward.host_port <= 65535 and 1 <= forward.guest_port <= 65535
            ):
                raise InvalidRequest(f"node {node}: eth{nic.index}: bad port forward {forward}")
        return
    if nic.tunnel is None:
        return
    t = nic.tunnel
    for host, port in ((t.local_host, t.local_port), (t.remote_host, t.remote_port)):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise InvalidRequest(
                f"node {node}: eth{nic.index} tunnel host {host!r} is not an IP address"
            ) from None
        if not 1 <= port <= 65535:
            raise InvalidRequest(f"node {node}: eth{nic.index} tunnel port {port} is out of range")


# --- builders ---------------------------------------------------------------------------------


def identity_args(spec: NodeSpec) -> list[str]:
    """``-name`` (threads named after their role, handy in ``top -H``) and ``-uuid``."""
    args = ["-name", f"guest={spec.name},debug-threads=on"]
    if spec.uuid is not None:
        args += ["-uuid", str(uuid.UUID(spec.uuid))]
    return args


def misc_args() -> list[str]:
    """No default devices, no host config file, timestamped messages, a seccomp sandbox."""
    return ["-nodefaults", "-no-user-config", "-msg", "timestamp=on", "-sandbox", SANDBOX]


def cpu_args(accel: Accel, model: str | None = None) -> list[str]:
    """``-cpu``: ``model`` if given, else ``host`` under KVM and ``qemu64`` under TCG."""
    return ["-cpu", model or ("host" if accel is Accel.KVM else DEFAULT_TCG_CPU)]


def machine_args(spec: NodeSpec) -> list[str]:
    return ["-machine", spec.machine, "-accel", Accel(spec.accel).value]


def memory_args(spec: NodeSpec) -> list[str]:
    return ["-smp", str(spec.cpus), "-m", f"{spec.ram_mb}M"]


def process_args(spec: NodeSpec) -> list[str]:
    """``-pidfile`` (never ``-daemonize``: the process module starts QEMU in its own session);
    ``-S`` when the node starts paused until QMP ``cont``."""
    return ["-pidfile", str(spec.paths.pidfile), *(["-S"] if spec.start_paused else [])]


def display_args(spec: NodeSpec) -> list[str]:
    """Always a VGA card; VNC on a unix socket when enabled; never a local window."""
    args = ["-display", "none", "-vga", "std"]
    if spec.vnc:
        # force-shared: a desktop viewer that asks for an exclusive session must not throw
        # the browser's noVNC (or any other viewer) off the node.
        args += ["-vnc", f"unix:{_esc(spec.paths.vnc)},share=force-shared"]
    return args


def _server_socket(chardev_id: str, path: Path, fd: int | None, wait: bool = False) -> str:
    # server=on: QEMU listens, and listens again after a client leaves (a restarted server's
    # console hub reconnects). With ``fd``, the socket is virtlab's, bound at ``path`` before
    # the spawn and inherited as that descriptor. wait=on (the serial's, with ``fd``): QEMU
    # accepts one connection before it makes the machine; virtlab's is queued by then.
    where = f"fd={fd}" if fd is not None else f"path={_esc(path)}"
    return f"socket,id={chardev_id},{where},server=on,wait={'on' if wait else 'off'}"


def serial_args(spec: NodeSpec, *, passed: bool = False) -> list[str]:
    """COM1 on a unix socket QEMU listens on (or on a null backend: the port still exists).
    ``passed``: on virtlab's socket, inherited as :data:`SERIAL_FD`."""
    if spec.serial:
        fd = SERIAL_FD if passed else None
        chardev = _server_socket(SERIAL_CHARDEV, spec.paths.serial, fd, wait=passed)
    else:
        chardev = f"null,id={SERIAL_CHARDEV}"
    return ["-chardev", chardev, "-serial", f"chardev:{SERIAL_CHARDEV}"]


def qmp_args(spec: NodeSpec, *, passed: bool = False) -> list[str]:
    """QMP on a unix socket; ``passed``: virtlab's, inherited as :data:`QMP_FD`."""
    fd = QMP_FD if passed else None
    return [
        "-chardev", _server_socket(QMP_CHARDEV, spec.paths.qmp, fd),
        "-mon", f"chardev={QMP_CHARDEV},mode=control",
    ]  # fmt: skip


def _blockdev(path: Path, node: str, fmt: str, *, read_only: bool) -> list[str]:
    """A file node ``<node>-file`` and a format node ``<node>`` on top of it."""
    mode = "read-only=on" if read_only else "discard=unmap"
    return [
        "-blockdev", f"driver=file,filename={_esc(path)},node-name={node}-file,{mode}",
        "-blockdev", f"driver={fmt},file={node}-file,node-name={node},{mode}",
    ]  # fmt: skip


_CONTROLLERS = {
    DiskBus.SATA: f"ahci,id=ahci0,addr={DISK_SLOT:#04x}",
    DiskBus.SCSI: f"virtio-scsi-pci,id=scsi0,addr={DISK_SLOT:#04x}",
}
_DISK_DEVICES = {
    DiskBus.VIRTIO: f"virtio-blk-pci,addr={DISK_SLOT:#04x}",
    DiskBus.IDE: "ide-hd,bus=ide.0,unit=0",
    DiskBus.SATA: "ide-hd,bus=ahci0.0",
    DiskBus.SCSI: "scsi-hd,bus=scsi0.0,channel=0,scsi-id=0,lun=0",
}
_CDROM_DEVICES = {
    DiskBus.VIRTIO: "ide-cd,bus=ide.1,unit=0",  # the built-in IDE (AHCI port 1 on q35)
    DiskBus.IDE: "ide-cd,bus=ide.1,unit=0",
    DiskBus.SATA: "ide-cd,bus=ahci0.1",
    DiskBus.SCSI: "scsi-cd,bus=scsi0.0,channel=0,scsi-id=1,lun=0",
}


def disk_args(spec: NodeSpec) -> list[str]:
    """The overlay (qcow2, backing file from its header) on its bus, second in boot order."""
    bus = DiskBus(spec.disk_bus)
    args = _blockdev(spec.paths.disk, DISK_NODE, "qcow2", read_only=False)
    if bus in _CONTROLLERS:
        args += ["-device", _CONTROLLERS[bus]]
    device = f"{_DISK_DEVICES[bus]},drive={DISK_NODE},id={DISK_DEVICE},bootindex=1"
    return [*args, "-device", device]


def cdrom_args(spec: NodeSpec) -> list[str]:
    """The ISO (raw, read-only) on the disk's bus family, first in boot order."""
    if spec.cdrom is None:
        return []
    bus = DiskBus(spec.disk_bus)
    device = f"{_CDROM_DEVICES[bus]},drive={CDROM_NODE},id={CDROM_DEVICE},bootindex=0"
    return [*_blockdev(spec.cdrom, CDROM_NODE, "raw", read_only=True), "-device", device]


def checkpoint_args(spec: NodeSpec) -> list[str]:
    """``-loadvm TAG``: start from the checkpoint ``TAG`` in the disk instead of booting.
    With ``-S`` too, the machine waits, loaded, for QMP ``cont``."""
    return ["-loadvm", spec.loadvm] if spec.loadvm is not None else []


def netdev_id(index: int) -> str:
    return f"net{index}"


def nic_device_id(index: int) -> str:
    """The QOM id of NIC ``index`` (for QMP ``set_link``)."""
    return f"nic{index}"


def unplugged_nic_paths(paths: RunPaths, index: int) -> tuple[Path, Path]:
    """(QEMU's own socket, the peer nobody binds) of a NIC without a cable."""
    return paths.root / f"nic{index}.sock", paths.root / f"nic{index}.peer"


def _user_netdev(index: int, user: UserNet) -> str:
    """User-mode networking; forwards listen on 127.0.0.1 only."""
    parts = [f"user,id={netdev_id(index)}", f"restrict={'on' if user.restrict else 'off'}"]
    parts += [f"hostfwd={f.proto}:127.0.0.1:{f.host_port}-:{f.guest_port}" for f in user.forwards]
    return ",".join(parts)


def _netdev(paths: RunPaths, index: int, tunnel: UdpTunnel | None) -> str:
    if tunnel is None:
        local, peer = unplugged_nic_paths(paths, index)
        return (
            f"dgram,id={netdev_id(index)},local.type=unix,local.path={_esc(local)},"
            f"remote.type=unix,remote.path={_esc(peer)}"
        )
    return (
        f"dgram,id={netdev_id(index)},"
        f"local.type=inet,local.host={tunnel.local_host},local.port={tunnel.local_port},"
        f"remote.type=inet,remote.host={tunnel.remote_host},remote.port={tunnel.remote_port}"
    )


def nic_args(spec: NodeSpec) -> list[str]:
    """One ``-netdev`` and one ``-device`` per NIC, in index order, each in a fixed PCI slot."""
    args: list[str] = []
    for nic in sorted(spec.nics, key=lambda n: n.index):
        device = (
            f"{nic.model.value},netdev={netdev_id(nic.index)},id={nic_device_id(nic.index)},"
            f"mac={nic.mac.lower()},addr={FIRST_NIC_SLOT + nic.index:#04x}"
        )
        netdev = (
            _user_netdev(nic.index, nic.user) if nic.user is not None
            else _netdev(spec.paths, nic.index, nic.tunnel)
        )  # fmt: skip
        args += ["-netdev", netdev, "-device", device]
    return args


def build_argv(
    spec: NodeSpec, *, binary: str = "qemu-system-x86_64", passed_sockets: bool = False
) -> list[str]:
    """The whole command line for ``spec``; raises :class:`InvalidRequest` on a bad spec.
    ``passed_sockets``: QMP and the serial console on sockets virtlab made and passes as
    descriptors (what the driver runs); else QEMU binds their paths itself."""
    validate_spec(spec)
    extra = check_extra_args(spec.extra_args)
    return [
        binary,
        *identity_args(spec),
        *misc_args(),
        *machine_args(spec),
        *cpu_args(Accel(spec.accel), spec.cpu_model),
        *memory_args(spec),
        *process_args(spec),
        *display_args(spec),
        *qmp_args(spec, passed=passed_sockets),
        *serial_args(spec, passed=passed_sockets),
        *disk_args(spec),
        *cdrom_args(spec),
        *nic_args(spec),
        *checkpoint_args(spec),
        *extra,
    ]
