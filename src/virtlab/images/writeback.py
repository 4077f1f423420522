"""Get a file's bytes to the disk early: while a tool still writes it, and before the ``fsync``.

An import must ``fsync`` the converted image before it registers it. Left to itself, the kernel
holds the whole result in dirty pages and writes them out only when that ``fsync`` comes, so the
import then waits for a full write of the file. ``Writeback`` starts that write while
``qemu-img convert`` is still producing the file: every ``interval`` it asks the kernel to begin
writing what is dirty (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which does not wait, on
Linux), and the final ``fsync`` has little left to do.

Where ``sync_file_range`` is missing (not Linux, or no libc symbol), it does nothing: the
``fsync`` still makes the file durable, only later.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import threading
from pathlib import Path
from types import TracebackType

__all__ = ["Writeback", "fsync_dir", "fsync_file"]

_SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        func = libc.sync_file_range
        func.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
        func.restype = ctypes.c_int
        return func
    return None


_SYNC = _sync_file_range()


class Writeback:
    """While open, start the write-back of ``path``'s dirty pages every ``interval`` seconds.

    ``path`` may not exist yet when it starts (the tool creates it). Errors are ignored here:
    the ``fsync`` that must follow reports a disk that cannot take the file.
    """

    def __init__(self, path: Path, interval: float = 0.2) -> None:
        self.path = path
        self.interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="virtlab-writeback", daemon=True)

    def __enter__(self) -> Writeback:
        if _SYNC is not None:
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        fd = -1
        try:
            while not self._done.wait(self.interval):
                if fd < 0:
                    try:
                        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                    except FileNotFoundError:
                        continue
                _SYNC(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # type: ignore[misc]
        except OSError:
            pass
        finally:
            if fd >= 0:
                os.close(fd)


def fsync_file(path: Path) -> None:
    """Wait until ``path``'s data and metadata are on the disk."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Wait until the entries of directory ``path`` (a rename, a new file) are on the disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
