"""A tiny bootable ISO 9660 image (El Torito, isolinux): the boot disk's kernel and busybox.

The kernel, initramfs and kernel command line of :mod:`virtlab.devtools.guestkernel`, laid
out as ``/isolinux/{isolinux.bin,ldlinux.c32,isolinux.cfg}``, ``/vmlinuz`` and ``/initrd.gz``
and made into a "no emulation" El Torito CD with ``xorriso -as mkisofs``. It is a plain ISO
(no hybrid MBR), so it boots as a CD-ROM only. All dates are fixed (``SOURCE_DATE_EPOCH``,
``--modification-date``, file times): same inputs give a byte-identical image.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from virtlab._util.proc import run
from virtlab.devtools import bootdisk
from virtlab.devtools.guestkernel import (
    EPOCH,
    boot_config,
    build_initramfs,
    check_hostname,
    get_kernel,
)
from virtlab.errors import ToolFailure, VirtlabError

__all__ = ["ISOLINUX_BIN", "LDLINUX_C32", "MissingTools", "build_boot_iso", "ensure_tools"]

ISOLINUX_BIN = Path("/usr/lib/ISOLINUX/isolinux.bin")  # Debian package isolinux
LDLINUX_C32 = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")  # syslinux-common
VOLUME_ID = "VIRTLAB"
_DATE = "1980010100000000"  # EPOCH, as xorriso's YYYYMMDDhhmmsscc


def _which(tool: str) -> str | None:
    return shutil.which(tool)


class MissingTools(bootdisk.MissingTools):
    """Host tools needed to build the boot ISO are not installed."""

    def __init__(self, packages: list[str]) -> None:
        super().__init__(packages)
        self.message = self.message.replace("the boot disk", "the boot ISO")


def ensure_tools() -> None:
    """Raise :class:`MissingTools` naming the Debian packages missing on this host."""
    missing = set()
    if _which("xorriso") is None:
        missing.add("xorriso")
    if not ISOLINUX_BIN.is_file():
        missing.add("isolinux")
    if not LDLINUX_C32.is_file():
        missing.add("syslinux-common")
    try:
        bootdisk.ensure_tools()  # the one we share with the disk: a static busybox
    except bootdisk.MissingTools as exc:
        missing.update(p for p in exc.packages if p == "busybox-static")
    if missing:
        raise MissingTools(sorted(missing))


def build_boot_iso(
    out: Path, *, cache_dir: Path | None = None, hostname: str | None = None
) -> Path:
    """Build a bootable ISO at ``out`` and return its path (``hostname`` as for the disk)."""
    check_hostname(hostname)
    ensure_tools()
    out = Path(out)
    kernel = get_kernel(cache_dir)
    initrd = build_initramfs(kernel, Path(_which("busybox") or "/bin/busybox"))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        root = Path(tmp) / "root"
        (root / "isolinux").mkdir(parents=True)
        shutil.copyfile(ISOLINUX_BIN, root / "isolinux" / "isolinux.bin")
        shutil.copyfile(LDLINUX_C32, root / "isolinux" / "ldlinux.c32")
        (root / "isolinux" / "isolinux.cfg").write_bytes(boot_config(hostname))
        shutil.copyfile(kernel.vmlinuz, root / "vmlinuz")
        (root / "initrd.gz").write_bytes(initrd)
        for path in [*root.rglob("*"), root]:
            os.utime(path, (EPOCH, EPOCH))
        image = Path(tmp) / "boot.iso"
        argv = [
            "env", f"SOURCE_DATE_EPOCH={EPOCH}", "xorriso", "-as", "mkisofs", "-quiet",
            "-o", str(image), "-V", VOLUME_ID, "-r", "-J",
            f"--modification-date={_DATE}", "--set_all_file_dates", _DATE,
            "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
            "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table", str(root),
        ]  # fmt: skip
        done = run(argv, timeout=600)
        if done.returncode != 0:
            raise ToolFailure(
                f"xorriso failed (exit {done.returncode}): {done.stderr_tail}",
                argv=argv,
                returncode=done.returncode,
                stderr=done.stderr,
            )
        os.replace(image, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m virtlab.devtools.bootiso",
        description="Build a tiny bootable ISO (busybox shell on ttyS0 and tty1).",
    )
    parser.add_argument("out", type=Path, help="where to write the ISO image")
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--hostname")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        path = build_boot_iso(args.out, cache_dir=args.cache_dir, hostname=args.hostname)
    except (VirtlabError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{path} ({time.monotonic() - started:.1f} s); boot it with e.g.")
    print(f"  qemu-system-x86_64 -accel tcg -m 256 -nographic -cdrom {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
