"""What this host can do: the QEMU binaries, their versions, and an accelerator that works.

``/dev/kvm`` existing is not proof that KVM works. On some hosts (nested virtualisation
without hardware help) it opens fine, yet ``-cpu host`` aborts and guests hang or crawl. So
``auto`` picks KVM only after a functional probe: a tiny guest, written here (a 512-byte
boot sector), booted by SeaBIOS under ``-accel kvm -cpu host``, must write a byte to QEMU's
``isa-debug-exit`` port within a few seconds; QEMU then exits with ``(byte << 1) | 1``. That
exit code can only come from guest code that ran. Under TCG the same guest finishes in about
0.2 s (the positive control the tests run). Anything else (a hang, an abort, an error) means
TCG, and the verdict says why.

The verdict of the probe is cached in a JSON file keyed by the QEMU binary's real path, its
version banner and the kernel release, so it runs once per host (and again after an upgrade).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virtlab._util.proc import run
from virtlab.errors import InvalidRequest, VirtlabError
from virtlab.nodes.qemu.argv import cpu_args
from virtlab.nodes.spec import Accel

__all__ = [
    "PROBE_EXIT_CODE",
    "AccelUnavailable",
    "AccelVerdict",
    "ProbeResult",
    "QemuBinaries",
    "QemuBinary",
    "QemuNotFound",
    "boot_sector",
    "default_cache_path",
    "find_binaries",
    "kvm_device_problem",
    "probe_accelerator",
    "qemu_version",
    "run_probe_guest",
]

log = logging.getLogger(__name__)

_PROBE_BYTE = 0x2A
PROBE_EXIT_CODE = (_PROBE_BYTE << 1) | 1  # what isa-debug-exit makes of the guest's byte
_DEBUG_EXIT_PORT = 0xF4
_KVM_GET_API_VERSION = 0xAE00
_KVM_API_VERSION = 12
_CACHE_FORMAT = 1
_VERSION_RE = re.compile(r"version (\d+\.\d+(?:\.\d+)?)")


class QemuNotFound(VirtlabError):
    """A QEMU program is missing or does not answer ``--version``."""


class AccelUnavailable(VirtlabError):
    """An accelerator was asked for by name, and this host cannot provide it."""


@dataclass(frozen=True)
class QemuBinary:
    path: str
    version: str  # "7.2.22"
    banner: str  # the first line of --version: "QEMU emulator version 7.2.22 (Debian …)"


@dataclass(frozen=True)
class QemuBinaries:
    system: QemuBinary  # qemu-system-x86_64
    img: QemuBinary  # qemu-img


@dataclass(frozen=True)
class AccelVerdict:
    """The accelerator nodes will use, and why (a sentence a person can act on)."""

    accel: Accel
    reason: str
    cached: bool = False


@dataclass(frozen=True)
class ProbeResult:
    """How the probe guest fared: ``ok`` only if its code ran and made QEMU exit as planned."""

    ok: bool
    seconds: float
    detail: str  # empty when ok
    returncode: int | None = None  # None: it did not exit in time


# --- binaries ---------------------------------------------------------------------------------


def qemu_version(path: str) -> QemuBinary:
    """Run ``path --version`` and parse it; raise :class:`QemuNotFound` if that fails."""
    try:
        done = run([path, "--version"], timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise QemuNotFound(f"{path} --version failed: {exc}") from exc
    banner = done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""
    found = _VERSION_RE.search(banner)
    if done.returncode != 0 or found is None:
        raise QemuNotFound(
            f"{path} --version did not print a QEMU version (exit {done.returncode}): "
            f"{(banner or done.stderr_tail)[:200]}"
        )
    return QemuBinary(path=path, version=found.group(1), banner=banner)


def _which(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise QemuNotFound(f"{name} is not on PATH; install it (Debian package {package})")
    return path


def find_binaries(system: str = "qemu-system-x86_64", img: str = "qemu-img") -> QemuBinaries:
    """Locate ``qemu-system-x86_64`` and ``qemu-img`` (names or paths) and read their versions."""
    return QemuBinaries(
        system=qemu_version(_which(system, "qemu-system-x86")),
        img=qemu_version(_which(img, "qemu-utils")),
    )


# --- /dev/kvm ---------------------------------------------------------------------------------


def kvm_device_problem(device: Path = Path("/dev/kvm")) -> str | None:
    """Why ``device`` cannot be used for KVM, or ``None`` if it opens read/write and answers."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"{device} does not exist (no KVM module loaded, or no hardware virtualisation)"
    except PermissionError:
        return f"{device} cannot be opened read/write (permission denied: join the kvm group)"
    except OSError as exc:
        return f"{device} cannot be opened read/write: {os.strerror(exc.errno or errno.EIO)}"
    try:
        version = fcntl.ioctl(fd, _KVM_GET_API_VERSION)
    except OSError as exc:
        return f"{device} is not a KVM device: {exc.strerror}"
    finally:
        os.close(fd)
    if version != _KVM_API_VERSION:
        return f"{device} speaks KVM API {version}, not {_KVM_API_VERSION}"
    return None


# --- the probe guest --------------------------------------------------------------------------


def boot_sector() -> bytes:
    """512 bytes SeaBIOS boots: ``mov al, 0x2a; out 0xf4, al; hlt; jmp $-1``."""
    code = bytes([0xB0, _PROBE_BYTE, 0xE6, _DEBUG_EXIT_PORT, 0xF4, 0xEB, 0xFD])
    return code + bytes(510 - len(code)) + b"\x55\xaa"


def _probe_argv(binary: str, accel: Accel, disk: Path) -> list[str]:
    return [
        binary, "-nodefaults", "-no-user-config", "-display", "none", "-m", "32",
        "-machine", "pc", "-accel", accel.value, *cpu_args(accel), "-no-reboot",
        "-drive", f"file={str(disk).replace(',', ',,')},format=raw,if=ide",
        "-device", f"isa-debug-exit,iobase={_DEBUG_EXIT_PORT:#x},iosize=0x04",
    ]  # fmt: skip


def _stop(proc: subprocess.Popen[bytes]) -> str:
    """Make sure ``proc`` is gone: SIGKILL by pid, then a bounded wait. Returns a remark."""
    if proc.poll() is not None:
        return ""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return f" (pid {proc.pid} did not die within 5 s of SIGKILL)"
    return ""


def _exit_text(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
    return f"exit {returncode}"


def run_probe_guest(binary: str, accel: Accel, *, timeout: float = 5.0) -> ProbeResult:
    """Boot the probe guest under ``accel`` and report whether it ran within ``timeout`` s.

    The guest is killed by its pid on every path (timeout, error, interrupt).
    """
    with tempfile.TemporaryDirectory(prefix="virtlab-probe-") as tmp:
        disk = Path(tmp) / "probe.raw"
        disk.write_bytes(boot_sector())
        errors = Path(tmp) / "stderr"
        argv = ["setpriv", "--pdeathsig", "KILL", "--", *_probe_argv(binary, accel, disk)]
        start = time.monotonic()
        with errors.open("wb") as err:
            try:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                    start_new_session=True, env={**os.environ, "LC_ALL": "C"},
                )  # fmt: skip
            except OSError as exc:
                return ProbeResult(False, 0.0, f"the test guest could not start: {exc}")
            returncode: int | None = None
            remark = ""
            try:
                returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
            finally:
                remark = _stop(proc)
        seconds = time.monotonic() - start
        said = " ".join(errors.read_text(errors="replace").split())[-300:].rstrip(".")
    if returncode == PROBE_EXIT_CODE:
        return ProbeResult(True, seconds, "", returncode)
    if returncode is None:
        detail = f"a test guest did not run within {timeout:g} s{remark}"
    else:
        detail = f"the test guest failed ({_exit_text(returncode)}): {said or 'no message'}"
    return ProbeResult(False, seconds, detail, returncode)


# --- the verdict and its cache ----------------------------------------------------------------


def default_cache_path(data_dir: Path) -> Path:
    """Where the server and ``virtlab doctor`` keep the verdict: ``DATA/cache/accel.json``."""
    return data_dir / "cache" / "accel.json"


def _cache_key(qemu: QemuBinary) -> str:
    return f"{os.path.realpath(qemu.path)}|{qemu.banner}|{os.uname().release}"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable accelerator cache %s: %s", path, exc)
        return {}
    entries = data.get("verdicts") if isinstance(data, dict) else None
    if not isinstance(entries, dict) or data.get("format") != _CACHE_FORMAT:
        log.warning("ignoring accelerator cache %s of an unknown shape", path)
        return {}
    return entries


def _cached_verdict(entries: dict[str, Any], key: str) -> AccelVerdict | None:
    entry = entries.get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("reason"), str):
        return None
    try:
        return AccelVerdict(Accel(entry.get("accel")), entry["reason"], cached=True)
    except ValueError:
        return None


def _write_cache(path: Path, entries: dict[str, Any]) -> None:
    """Replace the cache file in one step (a reader sees the old file or the new one)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as out:
            json.dump({"format": _CACHE_FORMAT, "verdicts": entries}, out, indent=2)
        os.replace(tmp, path)
    except OSError as exc:  # a verdict we cannot cache is still a verdict
        log.warning("cannot write accelerator cache %s: %s", path, exc)


def _parse_requested(requested: str | Accel) -> str:
    value = str(getattr(requested, "value", requested)).lower()
    if value not in ("auto", "kvm", "tcg"):
        raise InvalidRequest(f"accelerator must be auto, kvm or tcg, not {requested!r}")
    return value


def probe_accelerator(
    requested: str | Accel,
    *,
    cache_path: Path,
    qemu: QemuBinary | None = None,
    timeout: float = 5.0,
    kvm_device: Path = Path("/dev/kvm"),
    refresh: bool = False,
) -> AccelVerdict:
    """The accelerator to use for ``requested`` (``auto``, ``kvm`` or ``tcg``), with a reason.

    ``tcg`` spawns nothing. ``kvm`` checks the device only, and raises
    :class:`AccelUnavailable` if it is unusable. ``auto`` checks the device, then uses the
    cached verdict for this QEMU and kernel, or runs the probe guest (at most ``timeout``
    seconds) and caches what it found; ``refresh`` ignores the cache. Pass ``qemu`` when its
    version is known already, so that a cached verdict spawns no process at all.
    """
    mode = _parse_requested(requested)
    if mode == "tcg":
        return AccelVerdict(Accel.TCG, "TCG requested: software emulation, no KVM")
    problem = kvm_device_problem(kvm_device)
    if mode == "kvm":
        if problem:
            raise AccelUnavailable(f"KVM was requested, but {problem}; use accel auto or tcg")
        return AccelVerdict(Accel.KVM, f"KVM requested: {kvm_device} is usable (not probed)")
    if problem:
        return AccelVerdict(Accel.TCG, f"KVM: {problem}; using TCG")
    if qemu is None:
        qemu = qemu_version(_which("qemu-system-x86_64", "qemu-system-x86"))
    key = _cache_key(qemu)
    entries = _read_cache(cache_path)
    if not refresh and (cached := _cached_verdict(entries, key)) is not None:
        return cached
    result = run_probe_guest(qemu.path, Accel.KVM, timeout=timeout)
    if result.ok:
        verdict = AccelVerdict(Accel.KVM, f"KVM: a test guest ran in {result.seconds:.2f} s")
    else:
        hint = " (guests hang or crawl under KVM on this host)" if result.returncode is None else ""
        verdict = AccelVerdict(
            Accel.TCG,
            f"KVM: {kvm_device} opens, but under -accel kvm -cpu host {result.detail}{hint}; "
            "using TCG",
        )
    log.info("accelerator probe: %s (%s)", verdict.accel.value, verdict.reason)
    entries[key] = {
        "accel": verdict.accel.value,
        "reason": verdict.reason,
        "probed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_cache(cache_path, entries)
    return verdict
