"""The QEMU command line: golden lists for a handful of specs, refusals, and real QEMU runs.

The golden lists are written out in full on purpose: a change of the command line shows up
here as a diff a reviewer can read. The real runs start ``qemu-system-x86_64`` (TCG) with the
built argv on an overlay of the test boot disk, for every disk bus, and quit it over QMP.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from support.bootdisk import boot_disk
from virtlab.devtools.bootdisk import BOOT_MARKER
from virtlab.errors import InvalidRequest
from virtlab.nodes.names import stable_mac, validate_mac, validate_name
from virtlab.nodes.qemu.argv import (
    ALLOWED_EXTRA_ARGS,
    MAX_NICS,
    build_argv,
    check_extra_args,
    unplugged_nic_paths,
)
from virtlab.nodes.spec import (
    Accel,
    DiskBus,
    NicModel,
    NicSpec,
    NodeSpec,
    RunPaths,
    UdpTunnel,
)

ROOT = Path("/var/lib/virtlab/nodes/0a1b")
PATHS = RunPaths(ROOT)
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
HEAD = ["-nodefaults", "-no-user-config", "-msg", "timestamp=on", "-sandbox", SANDBOX]
QMP = [
    "-chardev", f"socket,id=qmp,path={ROOT}/qmp.sock,server=on,wait=off",
    "-mon", "chardev=qmp,mode=control",
]  # fmt: skip
SERIAL = [
    "-chardev", f"socket,id=serial0,path={ROOT}/serial.sock,server=on,wait=off",
    "-serial", "chardev:serial0",
]  # fmt: skip
DISK = [
    "-blockdev", f"driver=file,filename={ROOT}/disk.qcow2,node-name=disk0-file,discard=unmap",
    "-blockdev", "driver=qcow2,file=disk0-file,node-name=disk0,discard=unmap",
]  # fmt: skip
ISO = Path("/var/lib/virtlab/images/debian-12.iso")
CDROM = [
    "-blockdev", f"driver=file,filename={ISO},node-name=cdrom0-file,read-only=on",
    "-blockdev", "driver=raw,file=cdrom0-file,node-name=cdrom0,read-only=on",
]  # fmt: skip

# What the driver runs: its own listening sockets, inherited as descriptors 3 and 4; QEMU
# accepts the serial connection (queued already) before it makes the machine (wait=on).
QMP_PASSED = ["-chardev", "socket,id=qmp,fd=3,server=on,wait=off",
              "-mon", "chardev=qmp,mode=control"]  # fmt: skip
SERIAL_PASSED = ["-chardev", "socket,id=serial0,fd=4,server=on,wait=on",
                 "-serial", "chardev:serial0"]  # fmt: skip


def spec(**changes: Any) -> NodeSpec:
    return replace(NodeSpec(id="0a1b", name="r1", paths=PATHS), **changes)


# --- golden lists -----------------------------------------------------------------------------


def test_golden_minimal_tcg_virtio() -> None:
    assert build_argv(spec()) == [
        "qemu-system-x86_64",
        "-name", "guest=r1,debug-threads=on",
        *HEAD,
        "-machine", "pc", "-accel", "tcg", "-cpu", "qemu64",
        "-smp", "1", "-m", "256M",
        "-pidfile", f"{ROOT}/qemu.pid",
        "-display", "none", "-vga", "std", "-vnc", f"unix:{ROOT}/vnc.sock,share=force-shared",
        *QMP,
        *SERIAL,
        *DISK,
        "-device", "virtio-blk-pci,addr=0x04,drive=disk0,id=hd0,bootindex=1",
    ]  # fmt: skip


def test_golden_passed_sockets_no_halt() -> None:
    """The driver's form: QMP and COM1 on inherited descriptors; no ``-S`` (the guest runs at
    once; its first serial bytes wait in the connection virtlab queued before the spawn)."""
    argv = build_argv(spec(), passed_sockets=True)
    assert argv == [
        "qemu-system-x86_64",
        "-name", "guest=r1,debug-threads=on",
        *HEAD,
        "-machine", "pc", "-accel", "tcg", "-cpu", "qemu64",
        "-smp", "1", "-m", "256M",
        "-pidfile", f"{ROOT}/qemu.pid",
        "-display", "none", "-vga", "std", "-vnc", f"unix:{ROOT}/vnc.sock,share=force-shared",
        *QMP_PASSED,
        *SERIAL_PASSED,
        *DISK,
        "-device", "virtio-blk-pci,addr=0x04,drive=disk0,id=hd0,bootindex=1",
    ]  # fmt: skip
    assert "-S" not in argv
    # Without a serial console there is no socket to pass for it: COM1 stays, on null.
    quiet = build_argv(spec(serial=False), passed_sockets=True)
    assert quiet[quiet.index("-mon") - 2 : quiet.index("-serial") + 2] == [
        *QMP_PASSED, "-chardev", "null,id=serial0", "-serial", "chardev:serial0",
    ]  # fmt: skip


def test_golden_ide_cdrom_without_consoles() -> None:
    argv = build_argv(spec(disk_bus=DiskBus.IDE, cdrom=ISO, vnc=False, serial=False, ram_mb=512))
    assert argv == [
        "qemu-system-x86_64",
        "-name", "guest=r1,debug-threads=on",
        *HEAD,
        "-machine", "pc", "-accel", "tcg", "-cpu", "qemu64",
        "-smp", "1", "-m", "512M",
        "-pidfile", f"{ROOT}/qemu.pid",
        "-display", "none", "-vga", "std",
        *QMP,
        "-chardev", "null,id=serial0", "-serial", "chardev:serial0",
        *DISK,
        "-device", "ide-hd,bus=ide.0,unit=0,drive=disk0,id=hd0,bootindex=1",
        *CDROM,
        "-device", "ide-cd,bus=ide.1,unit=0,drive=cdrom0,id=cd0,bootindex=0",
    ]  # fmt: skip


def test_golden_sata_two_tunnels() -> None:
    v4 = UdpTunnel("127.0.0.1", 20000, "127.0.0.1", 20001)
    v6 = UdpTunnel("::1", 20002, "::1", 20003)
    nics = (
        NicSpec(0, NicModel.E1000, "52:54:00:aa:00:00", v4),
        NicSpec(1, NicModel.VIRTIO, "52:54:00:AA:00:01", v6),
    )
    argv = build_argv(spec(disk_bus=DiskBus.SATA, nics=nics, cpus=2))
    assert argv == [
        "qemu-system-x86_64",
        "-name", "guest=r1,debug-threads=on",
        *HEAD,
        "-machine", "pc", "-accel", "tcg", "-cpu", "qemu64",
        "-smp", "2", "-m", "256M",
        "-pidfile", f"{ROOT}/qemu.pid",
        "-display", "none", "-vga", "std", "-vnc", f"unix:{ROOT}/vnc.sock,share=force-shared",
        *QMP,
        *SERIAL,
        *DISK,
        "-device", "ahci,id=ahci0,addr=0x04",
        "-device", "ide-hd,bus=ahci0.0,drive=disk0,id=hd0,bootindex=1",
        "-netdev", "dgram,id=net0,local.type=inet,local.host=127.0.0.1,local.port=20000,"
                   "remote.type=inet,remote.host=127.0.0.1,remote.port=20001",
        "-device", "e1000,netdev=net0,id=nic0,mac=52:54:00:aa:00:00,addr=0x06",
        "-netdev", "dgram,id=net1,local.type=inet,local.host=::1,local.port=20002,"
                   "remote.type=inet,remote.host=::1,remote.port=20003",
        "-device", "virtio-net-pci,netdev=net1,id=nic1,mac=52:54:00:aa:00:01,addr=0x07",
    ]  # fmt: skip


def test_golden_scsi_cdrom_unplugged_nic_extras_paused() -> None:
    argv = build_argv(
        spec(
            disk_bus=DiskBus.SCSI,
            cdrom=ISO,
            nics=(NicSpec(2, NicModel.VMXNET3, "52:54:00:aa:00:02"),),
            uuid="5E6F8A1C-0B6E-4C4B-9F6A-1D2E3F405162",
            start_paused=True,
            extra_args=("-rtc", "base=localtime", "--usb", "-device", "usb-tablet"),
        )
    )
    assert argv == [
        "qemu-system-x86_64",
        "-name", "guest=r1,debug-threads=on",
        "-uuid", "5e6f8a1c-0b6e-4c4b-9f6a-1d2e3f405162",
        *HEAD,
        "-machine", "pc", "-accel", "tcg", "-cpu", "qemu64",
        "-smp", "1", "-m", "256M",
        "-pidfile", f"{ROOT}/qemu.pid", "-S",
        "-display", "none", "-vga", "std", "-vnc", f"unix:{ROOT}/vnc.sock,share=force-shared",
        *QMP,
        *SERIAL,
        *DISK,
        "-device", "virtio-scsi-pci,id=scsi0,addr=0x04",
        "-device", "scsi-hd,bus=scsi0.0,channel=0,scsi-id=0,lun=0,drive=disk0,id=hd0,bootindex=1",
        *CDROM,
        "-device", "scsi-cd,bus=scsi0.0,channel=0,scsi-id=1,lun=0,drive=cdrom0,id=cd0,bootindex=0",
        "-netdev", f"dgram,id=net2,local.type=unix,local.path={ROOT}/nic2.sock,"
                   f"remote.type=unix,remote.path={ROOT}/nic2.peer",
        "-device", "vmxnet3,netdev=net2,id=nic2,mac=52:54:00:aa:00:02,addr=0x08",
        "-rtc", "base=localtime", "-usb", "-device", "usb-tablet",
    ]  # fmt: skip


def test_golden_kvm_q35() -> None:
    argv = build_argv(
        spec(accel=Accel.KVM, machine="q35", cpus=4, ram_mb=2048, vnc=False),
        binary="/usr/local/bin/qemu-system-x86_64",
    )
    assert argv == [
        "/usr/local/bin/qemu-system-x86_64",
        "-name", "guest=r1,debug-threads=on",
        *HEAD,
        "-machine", "q35", "-accel", "kvm", "-cpu", "host",
        "-smp", "4", "-m", "2048M",
        "-pidfile", f"{ROOT}/qemu.pid",
        "-display", "none", "-vga", "std",
        *QMP,
        *SERIAL,
        *DISK,
        "-device", "virtio-blk-pci,addr=0x04,drive=disk0,id=hd0,bootindex=1",
    ]  # fmt: skip


def test_golden_resume_from_a_checkpoint_on_a_pinned_machine_type() -> None:
    """A resumed node: its machine type pinned to the checkpoint's, halted (-S) until its
    console listens, ``-loadvm TAG`` last but for the extra arguments."""
    argv = build_argv(
        spec(machine="pc-i440fx-7.2", start_paused=True, loadvm="configured.v2",
             nics=(NicSpec(0, NicModel.VIRTIO, "52:54:00:aa:00:00"),),
             extra_args=("-rtc", "base=utc"))
    )  # fmt: skip
    assert argv == [
        "qemu-system-x86_64",
        "-name", "guest=r1,debug-threads=on",
        *HEAD,
        "-machine", "pc-i440fx-7.2", "-accel", "tcg", "-cpu", "qemu64",
        "-smp", "1", "-m", "256M",
        "-pidfile", f"{ROOT}/qemu.pid", "-S",
        "-display", "none", "-vga", "std", "-vnc", f"unix:{ROOT}/vnc.sock,share=force-shared",
        *QMP,
        *SERIAL,
        *DISK,
        "-device", "virtio-blk-pci,addr=0x04,drive=disk0,id=hd0,bootindex=1",
        "-netdev", f"dgram,id=net0,local.type=unix,local.path={ROOT}/nic0.sock,"
                   f"remote.type=unix,remote.path={ROOT}/nic0.peer",
        "-device", "virtio-net-pci,netdev=net0,id=nic0,mac=52:54:00:aa:00:00,addr=0x06",
        "-loadvm", "configured.v2",
        "-rtc", "base=utc",
    ]  # fmt: skip


def test_golden_resume_of_a_cdrom_node_snapshots_only_its_disk() -> None:
    """The ISO stays read-only and outside the checkpoint: the argv differs from a cold start
    by ``-loadvm`` alone."""
    cold = build_argv(spec(cdrom=ISO, disk_bus=DiskBus.IDE))
    resumed = build_argv(spec(cdrom=ISO, disk_bus=DiskBus.IDE, loadvm="installed"))
    assert resumed == [*cold, "-loadvm", "installed"]
    assert [a for a in resumed if "node-name=" in a] == [*DISK[1::2], *CDROM[1::2]]


def test_cpu_model_and_commas_in_paths() -> None:
    root = Path("/srv/a,b")
    argv = build_argv(spec(paths=RunPaths(root), cpu_model="Nehalem,+popcnt"))
    assert argv[argv.index("-cpu") + 1] == "Nehalem,+popcnt"
    assert "unix:/srv/a,,b/vnc.sock,share=force-shared" in argv
    assert "socket,id=serial0,path=/srv/a,,b/serial.sock,server=on,wait=off" in argv
    assert "/srv/a,b/qemu.pid" in argv  # -pidfile takes a plain path: no escaping


def test_unplugged_nic_paths() -> None:
    assert unplugged_nic_paths(PATHS, 3) == (ROOT / "nic3.sock", ROOT / "nic3.peer")


def tunneled(tunnel: UdpTunnel) -> NicSpec:
    return NicSpec(0, NicModel.E1000, "52:54:00:00:00:01", tunnel)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"name": "-r1"}, "invalid node name"),
        ({"cpus": 0}, "cpus must be"),
        ({"ram_mb": 8}, "ram_mb must be"),
        ({"machine": "pc,dumpdtb=/tmp/x"}, "machine"),
        ({"machine": "microvm"}, "machine"),
        ({"cpu_model": "max,x=/etc/passwd"}, "cpu model"),
        ({"uuid": "nope"}, "not a UUID"),
        ({"nics": (NicSpec(0, NicModel.E1000, "52:54:00:00:00:01"),) * 2}, "repeat"),
        ({"nics": (NicSpec(MAX_NICS, NicModel.E1000, "52:54:00:00:00:01"),)}, "NIC index"),
        ({"nics": (NicSpec(0, NicModel.E1000, "01:00:5e:00:00:01"),)}, "multicast"),
        ({"nics": (NicSpec(0, NicModel.E1000, "52:54:00:00:00"),)}, "MAC"),
        ({"nics": (tunneled(UdpTunnel("evil,x=1", 1, "::1", 2)),)}, "not an IP address"),
        ({"nics": (tunneled(UdpTunnel("::1", 0, "::1", 2)),)}, "out of range"),
        ({"extra_args": ("-drive", "file=/etc/shadow")}, "-drive"),
        ({"loadvm": "1"}, "cannot name a checkpoint"),
        ({"loadvm": "a,b=c"}, "cannot name a checkpoint"),
        ({"loadvm": ""}, "cannot name a checkpoint"),
        ({"loadvm": "-incoming"}, "cannot name a checkpoint"),
    ],
)  # fmt: skip
def test_bad_specs_are_refused(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(words)):
        build_argv(spec(**changes))


# --- names and MACs ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["r1", "R", "core-sw.1_a", "9" * 63])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


BAD_NAMES = ["", "-r1", ".r1", "_r", "r 1", "r/1", "r,1", "é", "x" * 64, "a\n", "a;b"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_names_say_the_rule(name: str) -> None:
    with pytest.raises(InvalidRequest, match="letters, digits"):
        validate_name(name)


def test_stable_mac() -> None:
    mac = stable_mac("0a1b", 0)
    assert mac == stable_mac("0a1b", 0)
    assert re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", mac)
    assert validate_mac(mac) == mac
    macs = {stable_mac(f"node{n}", i) for n in range(50) for i in range(8)}
    assert len(macs) == 400
    with pytest.raises(InvalidRequest):
        stable_mac("", 0)
    with pytest.raises(InvalidRequest):
        stable_mac("x", -1)


# --- extra arguments --------------------------------------------------------------------------

ACCEPTED = [
    ("-rtc", "base=utc"),
    ("-rtc", "base=localtime,clock=vm,driftfix=slew"),
    ("-rtc", "base=2006-06-17T16:01:21"),
    ("-boot", "menu=on,splash-time=3000"),
    ("-boot", "order=dc,strict=on"),
    ("-boot", "cd"),
    ("-smbios", "type=1,manufacturer=ACME,,Inc,product=Router 9000,serial=X1"),
    ("-smbios", "type=11,value=cisco:config=1"),
    ("-usb",),
    ("-usb", "-device", "usb-tablet"),
    ("-device", "virtio-rng-pci,id=rng0"),
    ("-device", "driver=i6300esb", "-watchdog-action", "reset"),
    ("-global", "PIIX4_PM.disable_s3=1"),
    ("-k", "de"),
    ("--rtc", "base=utc"),
]


@pytest.mark.parametrize("args", ACCEPTED, ids=lambda a: " ".join(a))
def test_extra_args_accepted(args: tuple[str, ...]) -> None:
    out = check_extra_args(args)
    assert out == tuple(a[1:] if a.startswith("--") else a for a in args)


REFUSED = [
    ("-monitor", "stdio"), ("-qmp", "tcp:0:4444,server"), ("-serial", "tcp::5555,server"),
    ("-chardev", "file,id=x,path=/etc/passwd"), ("-mon", "chardev=x"),
    ("-drive", "file=/etc/shadow"), ("-blockdev", "driver=file,filename=/x"), ("-hda", "/x"),
    ("-cdrom", "/x"), ("-object", "memory-backend-file,id=m,mem-path=/x"),
    ("-incoming", "tcp:0:4444"), ("-loadvm", "snap"), ("-plugin", "/x.so"), ("-add-fd", "fd=3"),
    ("-sandbox", "off"), ("-runas", "nobody"), ("-chroot", "/"), ("-daemonize",),
    ("-L", "/tmp"), ("-bios", "/tmp/bios.bin"), ("-kernel", "/boot/vmlinuz"),
    ("-netdev", "user,id=n"), ("-nic", "user"), ("-net", "nic"), ("-set", "drive.disk0.file=/x"),
    ("-readconfig", "/x"), ("-writeconfig", "/x"), ("-fsdev", "local,path=/"),
    ("-virtfs", "local,path=/"), ("-pidfile", "/x"), ("-D", "/x"), ("-trace", "file=/x"),
    ("-m", "64G"), ("-smp", "64"), ("-cpu", "host"), ("-machine", "q35"), ("-vnc", ":0"),
    ("--drive", "file=/x"), ("-option-rom", "/x"), ("-gdb", "tcp::1234"), ("-S",),
    ("-no-such-option",),
]  # fmt: skip


@pytest.mark.parametrize("args", REFUSED, ids=lambda a: a[0])
def test_extra_args_refused(args: tuple[str, ...]) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_extra_args(args)
    message = str(info.value)
    assert f"extra QEMU argument {args[0]} is not allowed" in message
    assert "allowed options: " + ", ".join(ALLOWED_EXTRA_ARGS) in message


BAD_VALUES = [
    ("-rtc", "base=utc,file=/etc/passwd", "'file' is not an accepted key"),
    ("-rtc", "base=yesterday", "base=yesterday"),
    ("-boot", "splash=/etc/passwd", "'splash'"),
    ("-boot", "order=c,menu=on,,splash=/x", "menu=on,splash=/x"),
    ("-smbios", "file=/etc/passwd", "type="),
    ("-smbios", "type=11,path=/etc/passwd", "'path' is not a field of type 11"),
    ("-smbios", "type=1,serial=a\tb", "printable"),
    ("-device", "vfio-pci,host=01:00.0", "not on the list"),
    ("-device", "usb-tablet,bus=usb.0", "only id=ID"),
    ("-device", "usb-tablet,id=nic0", "virtlab's own"),
    ("-device", '{"driver":"usb-tablet"}', "JSON"),
    ("-device", "usb-storage,drive=disk0", "not on the list"),
    ("-global", "isa-fdc.driveA=disk0", "DRIVER.PROPERTY"),
    ("-global", "PIIX4_PM.disable_s3=1,x", "DRIVER.PROPERTY"),
    ("-k", "../../etc/passwd", "not an accepted value"),
    ("-watchdog-action", "explode", "not an accepted value"),
    ("-rtc", "base=utc\n-drive", "single-line"),
]


@pytest.mark.parametrize(("option", "value", "words"), BAD_VALUES, ids=lambda x: str(x)[:30])
def test_extra_arg_values_refused(option: str, value: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_extra_args([option, value])
    message = str(info.value)
    assert f"extra QEMU argument {option}" in message and "is refused" in message
    assert words in message
    assert ALLOWED_EXTRA_ARGS[option] in message


@pytest.mark.parametrize(
    ("args", "words"),
    [(("base=utc",), "not an option"), (("-rtc",), "needs a value"), (("-",), "not an option")],
)
def test_extra_args_shape(args: tuple[str, ...], words: str) -> None:
    with pytest.raises(InvalidRequest, match=words):
        check_extra_args(args)


# --- real QEMU --------------------------------------------------------------------------------

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")


class Running:
    """A QEMU started from a built argv; talks to it over the sockets it listens on."""

    def __init__(self, argv: list[str], paths: RunPaths) -> None:
        self.paths = paths
        self.log = paths.log.open("wb")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.deadline = time.monotonic() + 60
        self.qmp_sock = self.connect(paths.qmp)
        self.qmp_file = self.qmp_sock.makefile("rwb")
        assert "QMP" in self._read_qmp()
        self.qmp("qmp_capabilities")

    def connect(self, path: Path) -> socket.socket:
        """Connect to a socket QEMU listens on (it appears during QEMU's start-up)."""
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                assert self.proc.poll() is None, f"qemu exited: {self.log_text()}"
                assert time.monotonic() < self.deadline, f"no {path}: {self.log_text()}"
                time.sleep(0.02)
                continue
            sock.settimeout(max(0.1, self.deadline - time.monotonic()))
            return sock

    def _read_qmp(self) -> dict[str, Any]:
        line = self.qmp_file.readline()
        assert line, f"QMP closed: {self.log_text()}"
        return json.loads(line)

    def qmp(self, command: str, **arguments: Any) -> Any:
        request = {"execute": command, **({"arguments": arguments} if arguments else {})}
        self.qmp_file.write(json.dumps(request).encode() + b"\n")
        self.qmp_file.flush()
        while "event" in (reply := self._read_qmp()):
            pass
        assert "return" in reply, reply
        return reply["return"]

    def log_text(self) -> str:
        self.log.flush()
        return self.paths.log.read_text(errors="replace")

    def quit(self) -> int:
        with contextlib.suppress(OSError, AssertionError):
            self.qmp("quit")
        return self.proc.wait(timeout=15)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=15)
        self.qmp_file.close()
        self.qmp_sock.close()
        self.log.close()


def read_until(sock: socket.socket, pattern: str, seen: bytearray) -> str:
    """Read ``sock`` into ``seen`` until ``pattern`` (a regex) matches; return the text."""
    while not (found := re.search(pattern, seen.decode(errors="replace"))):
        data = sock.recv(65536)
        assert data, f"socket closed; got {seen.decode(errors='replace')[-2000:]}"
        seen += data
    return found.group(0)


@pytest.fixture
def node_dir() -> Iterator[RunPaths]:
    root = Path(tempfile.mkdtemp(prefix="vlargv-"))  # short: unix socket paths < 108 bytes
    try:
        yield RunPaths(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def running(node: NodeSpec, boot: Path) -> Iterator[Running]:
    made = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(boot), "-F", "raw",
         str(node.paths.disk)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    qemu = Running(build_argv(node, binary=QEMU or "qemu-system-x86_64"), node.paths)
    try:
        yield qemu
    finally:
        qemu.kill()


def shell(serial: socket.socket, seen: bytearray, command: str, tag: str) -> str:
    """Run ``command`` on the guest's serial shell; the marker is split so the echo won't match."""
    serial.sendall(f"echo {tag}''B; {command}; echo {tag}''E\n".encode())
    return read_until(serial, rf"{tag}B\r?\n([\s\S]*?){tag}E", seen)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@needs_qemu
@pytest.mark.timeout(120)
def test_virtio_boots_with_cdrom_and_unplugged_nic(
    node_dir: RunPaths, tmp_path_factory: pytest.TempPathFactory
) -> None:
    boot = boot_disk(tmp_path_factory)
    mac = stable_mac("vt", 0)
    node = NodeSpec(
        id="vt", name="vt", paths=node_dir, start_paused=True, cdrom=boot,
        nics=(NicSpec(0, NicModel.VIRTIO, mac),),
    )  # fmt: skip
    with running(node, boot) as qemu:
        assert qemu.qmp("query-status")["status"] == "prelaunch"
        assert node_dir.pidfile.read_text().strip() == str(qemu.proc.pid)
        serial, seen = qemu.connect(node_dir.serial), bytearray()
        qemu.qmp("cont")
        read_until(serial, BOOT_MARKER, seen)
        out = shell(serial, seen, "ip link set eth0 up; cat /sys/class/net/eth0/address", "M1")
        assert mac in out
        out = shell(serial, seen, "ping -c1 -W1 10.9.9.2 >/dev/null 2>&1; echo rc=$?", "P1")
        assert "rc=1" in out  # the frame went nowhere, and nothing broke
        serial.close()  # the console hub goes away and comes back: QEMU listens again
        serial, seen = qemu.connect(node_dir.serial), bytearray()
        assert "42" in shell(serial, seen, "echo $((6*7))", "R1")
        with qemu.connect(node_dir.vnc) as vnc:
            assert vnc.recv(12) == b"RFB 003.008\n"
        serial.close()
        assert qemu.quit() == 0
        assert "warning" not in qemu.log_text().lower()


@needs_qemu
@pytest.mark.timeout(120)
def test_sata_boots_and_tunnels_carry_frames(
    node_dir: RunPaths, tmp_path_factory: pytest.TempPathFactory
) -> None:
    boot = boot_disk(tmp_path_factory)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(30)
        peer_port = peer.getsockname()[1]
        tunnels = (
            UdpTunnel("127.0.0.1", free_udp_port(), "127.0.0.1", peer_port),
            UdpTunnel("127.0.0.1", free_udp_port(), "127.0.0.1", free_udp_port()),
        )
        nics = (
            NicSpec(0, NicModel.VIRTIO, stable_mac("st", 0), tunnels[0]),
            NicSpec(1, NicModel.VMXNET3, stable_mac("st", 1), tunnels[1]),
        )
        node = NodeSpec(
            id="st", name="st", paths=node_dir, disk_bus=DiskBus.SATA, nics=nics,
            start_paused=True, vnc=False,
        )  # fmt: skip
        with running(node, boot) as qemu:
            serial, seen = qemu.connect(node_dir.serial), bytearray()
            qemu.qmp("cont")
            read_until(serial, BOOT_MARKER, seen)
            out = shell(serial, seen, "cat /sys/class/net/eth*/address", "A1")
            assert stable_mac("st", 0) in out and stable_mac("st", 1) in out
            shell(serial, seen, "ip link set eth0 up; ip addr add 10.9.9.1/24 dev eth0", "U1")
            serial.sendall(b"ping -c1 -W1 10.9.9.2\n")
            frame, _ = peer.recvfrom(65536)  # the guest's ARP request, through the tunnel
            assert frame[6:12] == bytes.fromhex(stable_mac("st", 0).replace(":", ""))
            assert frame[12:14] == b"\x08\x06"  # ARP
            serial.close()
            assert qemu.quit() == 0


@needs_qemu
@pytest.mark.timeout(120)
@pytest.mark.parametrize("bus", [DiskBus.IDE, DiskBus.SCSI])
def test_other_buses_start(
    bus: DiskBus, node_dir: RunPaths, tmp_path_factory: pytest.TempPathFactory
) -> None:
    boot = boot_disk(tmp_path_factory)
    node = NodeSpec(
        id="ot", name=f"bus-{bus}", paths=node_dir, disk_bus=bus, cdrom=boot,
        nics=(NicSpec(0, NicModel.RTL8139, stable_mac("ot", 0)),),
        extra_args=("-usb", "-device", "usb-tablet", "-rtc", "base=localtime"),
    )  # fmt: skip
    with running(node, boot) as qemu:
        assert qemu.qmp("query-status")["status"] == "running"
        block = {dev["qdev"]: dev for dev in qemu.qmp("query-block")}
        assert block["hd0"]["inserted"]["node-name"] == "disk0"
        assert block["hd0"]["inserted"]["drv"] == "qcow2"
        assert block["cd0"]["inserted"]["ro"] is True
        assert qemu.quit() == 0


def test_user_mode_nics_forward_on_loopback_only_and_are_restricted() -> None:
    from virtlab.nodes.spec import Forward, UserNet

    user = UserNet(forwards=(Forward("tcp", 2222, 22), Forward("udp", 5353, 53)))
    spec = NodeSpec(
        id="n1", name="n1", paths=RunPaths(Path("/srv/n1")),
        nics=(NicSpec(0, NicModel.VIRTIO, "52:54:00:00:00:01", user=user),),
    )  # fmt: skip
    argv = build_argv(spec)
    netdev = argv[argv.index("-netdev") + 1]
    assert netdev == (
        "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=udp:127.0.0.1:5353-:53"
    )
    bad = NodeSpec(
        id="n1", name="n1", paths=RunPaths(Path("/srv/n1")),
        nics=(NicSpec(0, NicModel.VIRTIO, "52:54:00:00:00:01",
                      user=UserNet(forwards=(Forward("sctp", 1, 2),))),),
    )  # fmt: skip
    with pytest.raises(InvalidRequest, match="bad port forward"):
        build_argv(bad)
