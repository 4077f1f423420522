"""A tiny bootable disk for tests and demos: syslinux on FAT, Debian's cloud kernel, busybox.

The disk is a raw FAT image (no partition table) made without root or loop mounts:
``mkfs.fat`` on a file, files copied with ``mcopy``, ``syslinux --install`` for the boot
sector. The kernel and initramfs are :mod:`virtlab.devtools.guestkernel`'s. The disk itself is
never mounted by the guest, so it boots from IDE, SATA or virtio-blk alike. Same inputs give a
byte-identical image.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from virtlab.devtools.guestkernel import (
    BOOT_MARKER,
    CMDLINE,
    DEFAULT_HOSTNAME,
    EPOCH,
    OPTIONAL_MODULES,
    REQUIRED_MODULES,
    Kernel,
    boot_config,
    build_initramfs,
    check_hostname,
    default_cache_dir,
    get_kernel,
    is_static_elf,
    run_tool,
)
from virtlab.devtools.guestkernel import which as _which
from virtlab.errors import VirtlabError

__all__ = [
    "BOOT_MARKER",
    "CMDLINE",
    "DEFAULT_HOSTNAME",
    "OPTIONAL_MODULES",
    "REQUIRED_MODULES",
    "Kernel",
    "MissingTools",
    "build_boot_disk",
    "build_initramfs",
    "default_cache_dir",
    "ensure_tools",
    "get_kernel",
]


_VOLUME_ID = "5649524c"

_PACKAGES = {  # Debian package -> what of it we use
    "busybox-static": "busybox",
    "dosfstools": "mkfs.fat",
    "mtools": "mcopy",
    "syslinux": "syslinux",
}


class MissingTools(VirtlabError):
    """Host tools needed to build the boot disk are not installed."""

    def __init__(self, packages: list[str]) -> None:
        super().__init__(
            "cannot build the boot disk: missing Debian packages "
            f"{', '.join(packages)}; install them with `apt-get install -y {' '.join(packages)}`"
            " (or `make setup`)"
        )
        self.packages = tuple(packages)


def ensure_tools() -> None:
    """Raise :class:`MissingTools` naming the Debian packages whose tools are not on this host."""
    missing = [pkg for pkg, tool in _PACKAGES.items() if _which(tool) is None]
    busybox = _which("busybox")
    if busybox and not is_static_elf(Path(busybox)) and "busybox-static" not in missing:
        missing.append("busybox-static")
    if missing:
        raise MissingTools(sorted(missing))


# --- the disk ------------------------------------------------------------------------------


def build_boot_disk(
    out: Path,
    *,
    cache_dir: Path | None = None,
    size_mib: int = 48,
    hostname: str | None = None,
) -> Path:
    """Build a bootable raw disk image at ``out`` and return its path.

    ``hostname`` (default: none, so the guest calls itself ``virtlab-guest``) is put on the
    kernel command line as ``virtlab.hostname=``.
    """
    check_hostname(hostname)
    ensure_tools()
    out = Path(out)
    kernel = get_kernel(cache_dir)
    initrd = build_initramfs(kernel, Path(_which("busybox") or "/bin/busybox"))
    needed = kernel.vmlinuz.stat().st_size + len(initrd) + (2 << 20)
    if size_mib << 20 < needed:
        raise ValueError(f"size_mib={size_mib} is too small: the disk needs {needed >> 20} MiB")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        staging = Path(tmp)
        image = staging / "disk.img"
        files = [staging / "vmlinuz", staging / "initrd.gz", staging / "syslinux.cfg"]
        shutil.copyfile(kernel.vmlinuz, files[0])
        files[1].write_bytes(initrd)
        files[2].write_bytes(boot_config(hostname))
        for f in files:
            os.utime(f, (EPOCH, EPOCH))
        with image.open("wb") as f:
            f.truncate(size_mib << 20)
        mkfs = _which("mkfs.fat") or "mkfs.fat"
        run_tool([mkfs, "--invariant", "-i", _VOLUME_ID, "-n", "VIRTLAB", str(image)], "mkfs.fat")
        # mtools (which syslinux runs too) stamps files with SOURCE_DATE_EPOCH when set.
        env = ["env", "MTOOLS_SKIP_CHECK=1", f"SOURCE_DATE_EPOCH={EPOCH}"]
        run_tool([*env, "mcopy", "-m", "-i", str(image), *map(str, files), "::/"], "mcopy")
        run_tool([*env, "syslinux", "--install", str(image)], "syslinux --install")
        os.replace(image, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m virtlab.devtools.bootdisk",
        description="Build a tiny bootable raw disk (busybox shell on ttyS0 and tty1).",
    )
    parser.add_argument("out", type=Path, help="where to write the raw disk image")
    parser.add_argument("--size-mib", type=int, default=48)
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--hostname")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        path = build_boot_disk(args.out, **{k: v for k, v in vars(args).items() if k != "out"})
    except (VirtlabError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{path} ({time.monotonic() - started:.1f} s); boot it with e.g.")
    print(f"  qemu-system-x86_64 -accel tcg -m 256 -nographic -drive file={path},format=raw")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
