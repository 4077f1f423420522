"""The guest that virtlab's test media boot: Debian's cloud kernel and a busybox initramfs.

The kernel comes from Debian's ``linux-image-cloud-amd64`` dependency, fetched once with
``apt-get download`` and unpacked with ``dpkg -x``; the kernel and the few modules the guest
needs are cached, so later builds run no apt at all and take well under a second.

The initramfs (built here as a gzip'd newc cpio) holds busybox-static and an ``/init`` that
loads the virtio (and other NIC) modules, brings up ``lo``, sets the hostname from
``virtlab.hostname=`` on the kernel command line and hands over to busybox init, which runs a
root shell on ttyS0 and tty1 (each prints :data:`BOOT_MARKER` first) and acpid, so the ACPI
power button powers the guest off.

:mod:`virtlab.devtools.bootdisk` puts it on a FAT disk with syslinux,
:mod:`virtlab.devtools.bootiso` on an El Torito CD with isolinux; both boot it with
:func:`boot_config`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import struct
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from virtlab._util.proc import run
from virtlab.errors import ToolFailure

__all__ = [
    "BOOT_MARKER",
    "CMDLINE",
    "DEFAULT_HOSTNAME",
    "EPOCH",
    "Kernel",
    "boot_config",
    "build_initramfs",
    "check_hostname",
    "default_cache_dir",
    "get_kernel",
    "is_static_elf",
    "run_tool",
    "which",
]

BOOT_MARKER = "VIRTLAB-BOOT-OK"
DEFAULT_HOSTNAME = "virtlab-guest"
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
# no_timer_check: a guest starved of CPU under TCG (many nodes on two cores) can fail the
# kernel's IO-APIC timer check and panic; the check guards against broken hardware we never have.
CMDLINE = "console=ttyS0,115200 console=tty0 quiet no_timer_check"

# Loaded in dependency order (deps first); optional ones are skipped when the kernel lacks them
# (the cloud kernel has no e1000 or 8139) or has them built in (af_packet).
REQUIRED_MODULES = ("virtio_ring", "virtio", "virtio_pci", "virtio_blk", "virtio_net")
# evdev gives acpid /dev/input/event*, button is the ACPI power button.
OPTIONAL_MODULES = ("virtio_console", "vmxnet3", "e1000", "e1000e", "8139cp", "8139too")
OPTIONAL_MODULES += ("af_packet", "evdev", "button")
_LAYOUT = 1  # bump when the cached kernel layout changes
EPOCH = 315532800  # 1980-01-01, the earliest FAT time: fixed file times for a stable image

_SBIN_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
)
HOSTNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")


def which(tool: str) -> str | None:
    return shutil.which(tool, path=_SBIN_PATH)


def is_static_elf(path: Path) -> bool:
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    phoff = int.from_bytes(data[0x20:0x28], "little")
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = (struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum))
    return 3 not in types  # no PT_INTERP: statically linked


def run_tool(argv: list[str], what: str, cwd: Path | None = None) -> str:
    if cwd is not None:  # proc.run has no cwd: tools here take absolute paths instead
        argv = ["sh", "-c", 'cd "$0" && exec "$@"', str(cwd), *argv]
    done = run(argv, timeout=600)
    if done.returncode != 0:
        raise ToolFailure(
            f"{what} failed (exit {done.returncode}): {done.stderr_tail or done.stdout[-400:]}",
            argv=argv,
            returncode=done.returncode,
            stderr=done.stderr,
        )
    return done.stdout


def check_hostname(hostname: str | None) -> None:
    """Refuse a hostname the guest's /init could not set (letters, digits, dashes; 63 at most)."""
    if hostname is not None and not HOSTNAME_RE.match(hostname):
        raise ValueError(f"invalid hostname {hostname!r}")


def boot_config(hostname: str | None) -> bytes:
    """The syslinux / isolinux configuration: the kernel and initramfs at the root, on ttyS0."""
    append = CMDLINE + (f" virtlab.hostname={hostname}" if hostname else "")
    return (
        "SERIAL 0 115200\nDEFAULT virtlab\nPROMPT 0\nTIMEOUT 0\n"
        f"LABEL virtlab\n  LINUX /vmlinuz\n  INITRD /initrd.gz\n  APPEND {append}\n"
    ).encode()


# --- kernel: download once, keep vmlinuz and the modules we need ---------------------------


@dataclass(frozen=True)
class Kernel:
    release: str  # e.g. "6.1.0-56-cloud-amd64"
    package: str  # the .deb it came from
    vmlinuz: Path
    modules: tuple[Path, ...]  # uncompressed .ko files in load order


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "virtlab" / "bootdisk"


def _download_kernel_deb(debs: Path) -> Path:
    if not all(map(which, ("apt-cache", "apt-get", "dpkg"))):
        raise ToolFailure(
            f"the boot disk kernel is not cached in {debs.parent} and this host has no "
            "apt-get/dpkg to fetch it; build once on a Debian host and copy that directory"
        )
    deps = run_tool(["apt-cache", "depends", KERNEL_META_PACKAGE], "apt-cache depends")
    found = re.search(r"Depends:\s*(linux-image-\S+-cloud-amd64)\b", deps)
    if not found:
        raise ToolFailure(f"{KERNEL_META_PACKAGE} names no kernel; run `apt-get update` first")
    debs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=debs, prefix=".dl-") as tmp:
        run_tool(["apt-get", "download", found.group(1)], "apt-get download", cwd=Path(tmp))
        (deb,) = Path(tmp).glob("*.deb")
        os.replace(deb, debs / deb.name)
        return debs / deb.name


def _modinfo_depends(ko: bytes, name: str) -> list[str]:
    """The ``depends=`` field of a module's ``.modinfo`` ELF section."""
    if ko[:4] != b"\x7fELF" or ko[4] != 2:
        raise ToolFailure(f"kernel module {name} is not a 64-bit ELF file")
    shoff = int.from_bytes(ko[0x28:0x30], "little")
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        sh_name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", ko, shoff + i * shentsize)
        return sh_name, offset, size

    strtab = section(shstrndx)[1]
    for i in range(shnum):
        sh_name, offset, size = section(i)
        if ko[strtab + sh_name : ko.index(b"\0", strtab + sh_name)] == b".modinfo":
            for field in ko[offset : offset + size].split(b"\0"):
                if field.startswith(b"depends="):
                    return [d for d in field[8:].decode().split(",") if d]
            return []
    raise ToolFailure(f"kernel module {name} has no .modinfo section")


def _decompress(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def _module_name(path: Path) -> str:
    return path.name.split(".ko")[0].replace("-", "_")


def _unpack_kernel(deb: Path, dest: Path) -> None:
    """Unpack ``deb`` into a scratch dir and keep vmlinuz + the wanted modules at ``dest``."""
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".unpack-") as tmp:
        root = Path(tmp) / "root"
        run_tool(["dpkg", "-x", str(deb), str(root)], "dpkg -x")
        (moddir,) = (root / "lib" / "modules").iterdir()
        (vmlinuz,) = (root / "boot").glob("vmlinuz-*")
        files = {_module_name(p): p for p in moddir.rglob("*.ko*")}
        builtin_file = moddir / "modules.builtin"
        builtin_text = builtin_file.read_text() if builtin_file.exists() else ""
        builtin = {_module_name(Path(line)) for line in builtin_text.split()}
        order: list[str] = []
        blobs: dict[str, bytes] = {}

        def visit(name: str, required: bool) -> None:
            if name in blobs or name in builtin:
                return
            if name not in files:
                if required:
                    raise ToolFailure(f"kernel {moddir.name} has no module {name}")
                return
            blobs[name] = _decompress(files[name])
            for dep in _modinfo_depends(blobs[name], name):
                visit(dep, True)
            order.append(name)

        for name in REQUIRED_MODULES:
            visit(name, True)
        for name in OPTIONAL_MODULES:
            visit(name, False)
        out = Path(tmp) / "kernel"
        (out / "modules").mkdir(parents=True)
        shutil.copyfile(vmlinuz, out / "vmlinuz")
        for name in order:
            (out / "modules" / f"{name}.ko").write_bytes(blobs[name])
        manifest = {"release": moddir.name, "package": deb.name, "modules": order}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        try:
            out.rename(dest)
        except OSError:  # another build got there first
            if not (dest / "manifest.json").exists():
                raise


def get_kernel(cache_dir: Path | None = None) -> Kernel:
    """The cached kernel and modules; downloads and unpacks them the first time only."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    debs = cache / "debs"
    found = sorted(debs.glob("linux-image-*.deb"), key=lambda p: p.stat().st_mtime)
    deb = found[-1] if found else _download_kernel_deb(debs)
    key = hashlib.sha256(repr((_LAYOUT, REQUIRED_MODULES, OPTIONAL_MODULES)).encode())
    dest = cache / f"kernel-{deb.stem}-{key.hexdigest()[:10]}"
    if not (dest / "manifest.json").exists():
        _unpack_kernel(deb, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    return Kernel(
        release=manifest["release"],
        package=manifest["package"],
        vmlinuz=dest / "vmlinuz",
        modules=tuple(dest / "modules" / f"{m}.ko" for m in manifest["modules"]),
    )


# --- initramfs -----------------------------------------------------------------------------


class _Cpio:
    """A newc ("070701") cpio archive, written with fixed owners and times."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 0

    def _add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)):
        self._ino += 1
        encoded = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (self._ino, mode, 0, 0, nlink, EPOCH, len(data), 0, 0, *rdev, len(encoded), 0)
        header = b"070701" + b"".join(b"%08x" % f for f in fields) + encoded
        self._parts += [header, b"\0" * (-len(header) % 4), data, b"\0" * (-len(data) % 4)]

    def directory(self, name: str) -> None:
        self._add(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._add(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._add(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._add(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._ino = -1
        self._add("TRAILER!!!", 0)
        return b"".join(self._parts)


_INITTAB = """\
ttyS0::respawn:/etc/virtlab/shell
tty1::respawn:/etc/virtlab/shell
::once:/sbin/acpid
::ctrlaltdel:/sbin/reboot
"""
_SHELL = f"""\
#!/bin/sh
# Started by init on ttyS0 and tty1: the tty is open now, so typed input is kept.
echo "virtlab guest $(hostname) ready"
echo "{BOOT_MARKER}"
exec /bin/sh -l
"""
_PROFILE = """\
export PATH=/sbin:/usr/sbin:/bin:/usr/bin HOME=/root TERM=${TERM:-linux}
export PS1='\\h:\\w# '
cd /root
"""


def _init_script() -> bytes:
    template = resources.files("virtlab.devtools").joinpath("bootdisk_init.sh").read_text()
    text = template.replace("@DEFAULT_HOSTNAME@", DEFAULT_HOSTNAME)
    return text.replace("@BOOT_MARKER@", BOOT_MARKER).encode()


def build_initramfs(kernel: Kernel, busybox: Path) -> bytes:
    """The gzip'd newc initramfs: busybox, /init, the modules and a few /etc files."""
    cpio = _Cpio()
    dirs = "bin dev etc etc/acpi etc/acpi/PWRF etc/virtlab lib lib/modules proc root sbin sys"
    for d in f"{dirs} tmp usr usr/bin usr/sbin var var/log var/run".split():  # acpid: var/*
        cpio.directory(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.file("init", _init_script(), 0o755)
    cpio.file("etc/inittab", _INITTAB.encode())
    cpio.file("etc/profile", _PROFILE.encode())
    cpio.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    cpio.file("etc/group", b"root:x:0:\n")
    cpio.file("etc/virtlab/shell", _SHELL.encode(), 0o755)
    cpio.file("etc/acpi/PWRF/00000080", b"#!/bin/sh\npoweroff -f\n", 0o755)
    names = [ko.name for ko in kernel.modules]
    cpio.file("etc/virtlab/modules", "".join(f"{n}\n" for n in names).encode())
    for ko in kernel.modules:
        cpio.file(f"lib/modules/{ko.name}", ko.read_bytes())
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)
