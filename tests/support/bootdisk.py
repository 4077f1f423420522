"""One tiny bootable disk per test session, shared by every test that boots a guest.

::

    def test_something(tmp_path_factory):
        disk = boot_disk(tmp_path_factory)
        with Guest.start(disk) as guest:
            guest.wait_for(BOOT_MARKER)

The kernel is cached across sessions (``~/.cache/virtlab/bootdisk``, or under
``$XDG_CACHE_HOME``), so only the very first build on a machine runs ``apt-get download``.
Boot it with ``snapshot=True`` (the :class:`support.guest.Guest` default) so that guests can
share the file.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from virtlab.devtools.bootdisk import build_boot_disk

__all__ = ["boot_disk"]

_lock = threading.Lock()
_built: dict[str, Path] = {}


def boot_disk(tmp_path_factory: pytest.TempPathFactory, *, hostname: str | None = None) -> Path:
    """The session's boot disk (one per ``hostname``), built on first use."""
    key = hostname or ""
    with _lock:
        disk = _built.get(key)
        if disk is None or not disk.exists():
            out = tmp_path_factory.mktemp("bootdisk") / f"boot-{key or 'default'}.img"
            disk = _built[key] = build_boot_disk(out, hostname=hostname)
        return disk
