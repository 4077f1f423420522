"""Wait for a new entry in a directory: a socket QEMU binds, say, without polling for it."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
from pathlib import Path

__all__ = ["DirWatch"]

_IN_CREATE, _IN_MOVED_TO = 0x100, 0x80


class DirWatch:
    """Wakes :meth:`wait` when an entry is created in ``directory`` (Linux inotify).

    Where inotify is unavailable (or the directory does not exist yet) :meth:`wait` just sleeps
    for its timeout, which leaves the caller's back-off to do the work.
    """

    def __init__(self, directory: Path) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self._fd = -1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, AttributeError):
            return
        if fd < 0:
            return
        if libc.inotify_add_watch(fd, os.fsencode(directory), _IN_CREATE | _IN_MOVED_TO) < 0:
            os.close(fd)
            return
        self._fd = fd
        self._loop.add_reader(fd, self._on_event)

    def _on_event(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._fd, 65536):
                pass
        self._event.set()

    def wake(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """Wait for a new entry, at most ``timeout`` s; whether one appeared."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
        woke = self._event.is_set()
        self._event.clear()
        return woke

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            # Closing an inotify descriptor waits for an RCU grace period (~10 ms here): not
            # on the event loop.
            self._loop.run_in_executor(None, os.close, self._fd)
            self._fd = -1
