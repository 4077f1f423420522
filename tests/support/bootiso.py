"""One tiny bootable ISO per test session, shared by every test that boots from a CD-ROM.

::

    def test_something(tmp_path_factory):
        iso = boot_iso(tmp_path_factory)
        with Guest.start(None, bus="none", extra_args=cdrom_args(iso)) as guest:
            guest.wait_for(BOOT_MARKER)

Same kernel cache as :mod:`support.bootdisk`; QEMU opens the ISO read-only, so guests share it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from virtlab.devtools.bootiso import build_boot_iso

__all__ = ["boot_iso", "cdrom_args"]

_lock = threading.Lock()
_built: dict[str, Path] = {}


def boot_iso(tmp_path_factory: pytest.TempPathFactory, *, hostname: str | None = None) -> Path:
    """The session's boot ISO (one per ``hostname``), built on first use."""
    key = hostname or ""
    with _lock:
        iso = _built.get(key)
        if iso is None or not iso.exists():
            out = tmp_path_factory.mktemp("bootiso") / f"boot-{key or 'default'}.iso"
            iso = _built[key] = build_boot_iso(out, hostname=hostname)
        return iso


def cdrom_args(iso: Path) -> list[str]:
    """QEMU arguments for ``iso`` as a read-only CD-ROM on the first IDE channel's master."""
    opts = f"file={Path(iso).resolve()},format=raw,if=none,id=cd0,media=cdrom,readonly=on"
    return ["-drive", opts, "-device", "ide-cd,drive=cd0,bus=ide.0,unit=0,bootindex=0"]
