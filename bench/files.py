"""Files and sizes: incompressible files, the page cache, hashes, and how sizes and rates print.

Cache policy (the same for both sides of every ratio): page caches are never dropped. Before
each timed run the source file is read once in full (so it is in the page cache, as a file just
written or just uploaded would be) and ``sync`` is called (so no dirty pages of an earlier run
are written back during this one). Destinations are removed after each run. Nothing of this is
timed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "GiB",
    "MiB",
    "fsync",
    "human_bytes",
    "prepare_cache",
    "rate",
    "sha256_of",
    "write_random",
]

MiB = 1 << 20
GiB = 1 << 30


def write_random(path: Path, size: int, *, total: int | None = None, head: bytes = b"") -> Path:
    """``size`` bytes of incompressible data (AES-CTR keystream) at the start of ``path``.

    ``total`` makes the file that long, sparse past ``size``; ``head`` replaces the first bytes.
    """
    encryptor = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    zeros = bytes(16 * MiB)
    with path.open("wb") as out:
        out.write(head)
        left = size - len(head)
        while left > 0:
            block = encryptor.update(zeros[: min(left, len(zeros))])
            out.write(block)
            left -= len(block)
        if total is not None:
            out.truncate(total)
    return path


def prepare_cache(*paths: Path) -> None:
    """Read ``paths`` once in full into the page cache, then ``sync``: see the module's doc."""
    buf = bytearray(8 * MiB)
    for path in paths:
        with path.open("rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    os.sync()


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e6:,.0f} MB/s"
