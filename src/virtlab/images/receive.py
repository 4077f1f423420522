"""Stage 1 of an import: stream the uploaded bytes to the staging directory.

Bytes are written once, in chunks, with constant memory; sha256 is computed on the way; the
size cap is enforced while streaming, so an oversized upload stops at the cap, not at its end.
"""

from __future__ import annotations

import errno
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from virtlab._util.units import human_size
from virtlab.errors import InsufficientStorage, TooLarge
from virtlab.images.progress import ImportJob

__all__ = ["Received", "receive"]

# Writes are gathered to this size: fewer system calls, same constant memory.
_WRITE_BATCH = 4 << 20


@dataclass(frozen=True)
class Received:
    path: Path
    size: int
    sha256: str


async def receive(
    chunks: AsyncIterator[bytes],
    dest: Path,
    *,
    label: str,
    max_bytes: int,
    job: ImportJob,
    expected_size: int | None = None,
) -> Received:
    """Write ``chunks`` to ``dest``; raise ``TooLarge`` as soon as ``max_bytes`` is passed."""
    if expected_size is not None and expected_size > max_bytes:
        raise TooLarge(_too_large(label, max_bytes))
    digest = hashlib.sha256()
    size = 0
    pending: list[bytes] = []
    pending_size = 0
    try:
        with dest.open("wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    job.bytes_received = size - len(chunk)
                    raise TooLarge(_too_large(label, max_bytes))
                digest.update(chunk)
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= _WRITE_BATCH:
                    out.write(b"".join(pending))
                    pending, pending_size = [], 0
                    job.bytes_received = size
                    if expected_size:
                        job.advance(100.0 * size / expected_size)
            if pending:
                out.write(b"".join(pending))
            job.bytes_received = size
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientStorage(
                f"the data directory's disk filled up while receiving {label} "
                f"({size} bytes in); free some space and upload it again"
            ) from exc
        raise
    return Received(dest, size, digest.hexdigest())


def _too_large(label: str, cap: int) -> str:
    return (
        f"{label} is larger than the upload limit of {human_size(cap)}; "
        "raise VIRTLAB_MAX_UPLOAD_BYTES if it is genuine"
    )
