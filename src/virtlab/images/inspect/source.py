"""Positional, counted reads of one image file: the only way the inspectors touch its bytes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["ImageSource"]


class ImageSource:
    """A read-only view of an open file that never reads past its end and counts what it read.

    The inspectors ask for small regions by offset (``pread``); nothing reads a whole file.
    ``bytes_read`` and ``reads`` let tests and logs show how little that is.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.size = os.fstat(fd).st_size
        self.bytes_read = 0
        self.reads = 0

    @classmethod
    @contextmanager
    def open(cls, path: Path | str) -> Iterator[ImageSource]:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            yield cls(fd)
        finally:
            os.close(fd)

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset``; fewer only where the file ends."""
        if offset < 0 or length <= 0 or offset >= self.size:
            return b""
        length = min(length, self.size - offset)
        parts: list[bytes] = []
        while length > 0:
            chunk = os.pread(self._fd, length, offset)
            if not chunk:  # the file shrank under us: report what there is
                break
            parts.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
            self.bytes_read += len(chunk)
        self.reads += 1
        return b"".join(parts)

    def read_exact(self, offset: int, length: int) -> bytes | None:
        """Exactly ``length`` bytes at ``offset``, or None when the file ends before that."""
        if offset < 0 or offset + length > self.size:
            return None
        data = self.read(offset, length)
        return data if len(data) == length else None

    def tail(self, length: int) -> bytes:
        """The last ``length`` bytes (all of a shorter file)."""
        return self.read(max(0, self.size - length), length)

    def holds(self, offset: int, length: int) -> bool:
        """Whether ``offset .. offset+length`` lies inside the file."""
        return offset >= 0 and length >= 0 and offset + length <= self.size
