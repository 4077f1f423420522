"""The tiny boot ISO: reproducible, an ISO to virtlab's inspector, boots under TCG as a CD-ROM."""

from __future__ import annotations

import gzip
import hashlib
import subprocess
from pathlib import Path

import pytest

from support.bootiso import boot_iso, cdrom_args
from support.guest import Guest
from virtlab.devtools import bootdisk, bootiso, guestkernel
from virtlab.devtools.bootdisk import BOOT_MARKER
from virtlab.devtools.bootiso import MissingTools, build_boot_iso
from virtlab.images.formats import ImageFormat, ImageKind
from virtlab.images.inspect import inspect_file


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _iso_read(iso: Path, name: str, tmp_path: Path) -> bytes:
    out = tmp_path / Path(name).name
    subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", name, str(out)],
        check=True,
        capture_output=True,
    )
    data = out.read_bytes()
    out.unlink()
    return data


def test_ensure_tools_names_missing_packages(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(bootiso, "_which", lambda tool: None)
    monkeypatch.setattr(bootiso, "ISOLINUX_BIN", tmp_path / "isolinux.bin")
    monkeypatch.setattr(bootiso, "LDLINUX_C32", tmp_path / "ldlinux.c32")
    monkeypatch.setattr(bootdisk, "_which", lambda tool: None)  # no busybox, mtools...
    with pytest.raises(MissingTools) as caught:
        bootiso.ensure_tools()
    assert caught.value.packages == ("busybox-static", "isolinux", "syslinux-common", "xorriso")
    assert isinstance(caught.value, bootdisk.MissingTools)
    message = str(caught.value)
    assert message.startswith("cannot build the boot ISO: missing Debian packages")
    assert "apt-get install -y busybox-static isolinux syslinux-common xorriso" in message


def test_ensure_tools_passes_here() -> None:
    bootiso.ensure_tools()


def test_iso_is_reproducible_from_the_cached_kernel_and_an_iso_to_the_inspector(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = boot_iso(tmp_path_factory)

    def no_download(debs: Path) -> Path:
        raise AssertionError("the kernel is cached: a rebuild must not fetch it again")

    monkeypatch.setattr(guestkernel, "_download_kernel_deb", no_download)
    again = build_boot_iso(tmp_path / "sub" / "again.iso")
    assert _sha256(again) == _sha256(first)
    assert not list((tmp_path / "sub").glob(".*")), "no staging directory left behind"

    found = inspect_file(again, display_name="boot.iso", max_virtual_size=1 << 41)
    assert found.format is ImageFormat.ISO and found.format.kind is ImageKind.CDROM
    assert found.variant == "iso9660"
    assert "hybrid" not in found.features  # a plain El Torito CD, no MBR
    assert found.virtual_size == again.stat().st_size

    cfg = _iso_read(again, "/isolinux/isolinux.cfg", tmp_path).decode()
    assert f"APPEND {bootdisk.CMDLINE}\n" in cfg and "console=ttyS0,115200" in cfg
    initrd = gzip.decompress(_iso_read(again, "/initrd.gz", tmp_path))
    assert initrd.startswith(b"070701") and BOOT_MARKER.encode() in initrd


def test_hostname_goes_on_the_kernel_command_line(tmp_path: Path) -> None:
    iso = build_boot_iso(tmp_path / "named.iso", hostname="inst-1")
    assert "virtlab.hostname=inst-1" in _iso_read(iso, "/isolinux/isolinux.cfg", tmp_path).decode()
    with pytest.raises(ValueError, match="invalid hostname"):
        build_boot_iso(tmp_path / "bad.iso", hostname="a b")
    assert not (tmp_path / "bad.iso").exists()


def test_boots_under_tcg_as_a_cdrom_without_any_disk(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    iso = boot_iso(tmp_path_factory)
    with Guest.start(None, bus="none", extra_args=cdrom_args(iso)) as guest:
        guest.wait_for(BOOT_MARKER, timeout=120)
        assert guest.run("echo $((6*7))") == "42"
        assert "BOOT_IMAGE=/vmlinuz" in guest.run("cat /proc/cmdline")  # isolinux's doing
        assert guest.run("ls /sys/block | grep -c '^[sv]d' || true") == "0"  # no disk at all
        guest.send_line("poweroff -f")
        assert guest.wait_exit() == 0
