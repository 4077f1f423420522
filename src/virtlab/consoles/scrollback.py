"""A serial console's scrollback: the last bytes of output, optionally kept in a file.

The in-memory ring keeps at most ``cap`` bytes, cut at a line start when a newline is near the
cut (so a late client's first line is whole). With ``path``, every chunk is also appended to
that file (mode 0600, no fsync: it survives a server restart, not a host crash) and
:meth:`Scrollback.load` reads the tail back. The file stays under ``2 * cap``: when a chunk
would pass that, the file is replaced by the current ring. A file error turns persistence off
with a log message; the ring goes on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["Scrollback"]

log = logging.getLogger(__name__)
_ALIGN_WINDOW = 4096  # a trimmed scrollback starts after a newline found this close to the cut


def _trim(data: bytes | bytearray, cap: int) -> int:
    """How many leading bytes to drop from ``data`` to keep at most ``cap``, on a line start."""
    cut = len(data) - cap
    if cut <= 0:
        return 0
    newline = data.find(b"\n", cut, cut + _ALIGN_WINDOW)
    return newline + 1 if newline >= 0 else cut


class Scrollback:
    """The last ``cap`` bytes of output, mirrored to ``path`` when one is given."""

    def __init__(self, cap: int, path: Path | None = None) -> None:
        self.cap = cap
        self.path = Path(path) if path else None
        self._ring = bytearray()
        self._fd = -1
        self._size = 0  # of the file

    @property
    def data(self) -> bytes:
        return bytes(self._ring)

    def __len__(self) -> int:
        return len(self._ring)

    def load(self) -> None:
        """Read the file's tail into the ring and open the file for appending."""
        if self.path is None:
            return
        try:
            with self.path.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - self.cap - _ALIGN_WINDOW))
                self._add(f.read())
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                log.warning("cannot read the console log %s: %s", self.path, exc)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._size = os.fstat(self._fd).st_size
        except OSError as exc:
            log.warning("console log %s is off: %s", self.path, exc)

    def add(self, chunk: bytes) -> None:
        self._add(chunk)
        if self._fd < 0:
            return
        try:
            if self._size + len(chunk) > 2 * self.cap:
                self._rewrite()
            else:
                os.write(self._fd, chunk)
                self._size += len(chunk)
        except OSError as exc:
            log.warning("console log %s is off after a write error: %s", self.path, exc)
            self.close()

    def _add(self, chunk: bytes) -> None:
        self._ring += chunk
        if len(self._ring) > self.cap:
            del self._ring[: _trim(self._ring, self.cap)]

    def _rewrite(self) -> None:
        assert self.path is not None
        tmp = self.path.with_name(self.path.name + ".tmp")
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(self._ring)
        os.replace(tmp, self.path)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._size = len(self._ring)

    def close(self) -> None:
        """Stop mirroring to the file (the ring stays readable)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
