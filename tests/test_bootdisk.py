"""The tiny boot disk: built without root, reproducible, boots under TCG from IDE, virtio, SATA."""

from __future__ import annotations

import gzip
import hashlib
import subprocess
from pathlib import Path

import pytest

from support.bootdisk import boot_disk
from support.guest import Guest, GuestError
from virtlab.devtools import bootdisk, guestkernel
from virtlab.devtools.bootdisk import BOOT_MARKER, MissingTools, build_boot_disk, get_kernel


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fat_read(disk: Path, name: str) -> bytes:
    done = subprocess.run(
        ["mtype", "-i", str(disk), f"::/{name}"],
        capture_output=True,
        check=True,
        env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"},
    )
    return done.stdout


def test_ensure_tools_names_missing_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bootdisk, "_which", lambda tool: None if tool != "mcopy" else "/x")
    with pytest.raises(MissingTools) as caught:
        bootdisk.ensure_tools()
    assert caught.value.packages == ("busybox-static", "dosfstools", "syslinux")
    assert "apt-get install -y busybox-static dosfstools syslinux" in str(caught.value)


def test_ensure_tools_passes_here() -> None:
    bootdisk.ensure_tools()


def test_modules_are_ordered_by_dependency() -> None:
    kernel = get_kernel()
    names = [ko.stem for ko in kernel.modules]
    for name in bootdisk.REQUIRED_MODULES:
        assert name in names
    assert names.index("virtio_ring") < names.index("virtio") < names.index("virtio_pci")
    assert names.index("virtio") < names.index("virtio_blk")
    assert names.index("net_failover") < names.index("virtio_net")
    for ko in kernel.modules:
        assert ko.read_bytes()[:4] == b"\x7fELF"  # stored uncompressed for busybox insmod


def test_disk_is_reproducible_and_rebuilds_from_the_cached_kernel(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = boot_disk(tmp_path_factory)

    def no_download(debs: Path) -> Path:
        raise AssertionError("the kernel is cached: a rebuild must not fetch it again")

    monkeypatch.setattr(guestkernel, "_download_kernel_deb", no_download)
    again = build_boot_disk(tmp_path / "again.img")
    assert again.stat().st_size == 48 << 20
    assert _sha256(again) == _sha256(first)
    cfg = _fat_read(again, "syslinux.cfg").decode()
    assert "APPEND console=ttyS0,115200 console=tty0 quiet" in cfg
    initrd = gzip.decompress(_fat_read(again, "initrd.gz"))
    assert initrd.startswith(b"070701") and b"TRAILER!!!" in initrd
    assert BOOT_MARKER.encode() in initrd


def test_hostname_goes_on_the_kernel_command_line(tmp_path: Path) -> None:
    disk = build_boot_disk(tmp_path / "named.img", hostname="node-1", size_mib=32)
    assert disk.stat().st_size == 32 << 20
    assert "virtlab.hostname=node-1" in _fat_read(disk, "syslinux.cfg").decode()
    with pytest.raises(ValueError, match="invalid hostname"):
        build_boot_disk(tmp_path / "bad.img", hostname="a b")
    with pytest.raises(ValueError, match="too small"):
        build_boot_disk(tmp_path / "small.img", size_mib=8)


def test_ide_boot_shell_and_poweroff(tmp_path_factory: pytest.TempPathFactory) -> None:
    guest = Guest.start(boot_disk(tmp_path_factory), bus="ide")
    try:
        guest.wait_for(BOOT_MARKER, timeout=120)
        guest.send_line("echo $((6*7))")
        guest.wait_for("\n42\r\n", timeout=30)
        assert guest.run("hostname") == "virtlab-guest"
        assert "console=ttyS0,115200 console=tty0 quiet" in guest.run("cat /proc/cmdline")
        modules = guest.run("cut -d' ' -f1 /proc/modules").split()
        assert {"virtio_ring", "virtio", "virtio_pci", "virtio_blk", "virtio_net"} <= set(modules)
        assert "127.0.0.1" in guest.run("ip -4 addr show dev lo")
        guest.send_line("poweroff -f")
        assert guest.wait_exit(timeout=30) == 0
    finally:
        guest.stop()


def test_virtio_blk_boot(tmp_path_factory: pytest.TempPathFactory) -> None:
    with Guest.start(boot_disk(tmp_path_factory), bus="virtio") as guest:
        guest.wait_for(BOOT_MARKER, timeout=120)


def test_sata_boot_named_guest_and_acpi_power_button(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    disk = boot_disk(tmp_path_factory, hostname="sata-node")
    with Guest.start(disk, bus="sata", qmp=True) as guest:
        guest.wait_for(BOOT_MARKER, timeout=120)
        assert guest.run("hostname") == "sata-node"
        guest.run("pidof acpid")  # init started it; it exits non-zero if not running
        guest.qmp("system_powerdown")
        assert guest.wait_exit(timeout=30) == 0


def test_guest_start_reports_qemu_failing_early() -> None:
    with pytest.raises(GuestError, match=r"qemu exited with 1[\s\S]*no-such-option"):
        Guest.start(None, extra_args=["-no-such-option"])
