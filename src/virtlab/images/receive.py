"""Stage 1 of an import: stream the uploaded bytes to the staging directory.

Bytes are written once, in chunks, with constant memory; sha256 is computed on the way; the
size cap is enforced while streaming, so an oversized upload stops at the cap, not at its end.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from virtlab._util.units import human_size
from virtlab.errors import InsufficientStorage, TooLarge
from virtlab.images.progress import ImportJob

__all__ = ["Received", "receive"]

# Writes are gathered to this size: fewer system calls, same constant memory.
_WRITE_BATCH = 1 << 20
_IN_FLIGHT = 4  # batches handed to the worker and not yet written


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
    """Write ``chunks`` to ``dest``; raise ``TooLarge`` as soon as ``max_bytes`` is passed.

    The event loop only gathers chunks into batches; hashing and writing a batch happen in one
    worker thread (both release the GIL), so the socket is read while the previous batch is
    hashed and written. At most ``_IN_FLIGHT`` batches wait: memory stays constant, order kept.
    """
    if expected_size is not None and expected_size > max_bytes:
        raise TooLarge(_too_large(label, max_bytes))
    digest = hashlib.sha256()
    size = 0
    pending: list[bytes] = []
    pending_size = 0
    loop = asyncio.get_running_loop()
    in_flight: deque[asyncio.Future[None]] = deque()

    def absorb(block: bytes, out: BinaryIO) -> None:
        digest.update(block)
        out.write(block)

    try:
        with dest.open("wb") as out, ThreadPoolExecutor(1, "virtlab-receive") as worker:
            try:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        job.bytes_received = size - len(chunk)
                        raise TooLarge(_too_large(label, max_bytes))
                    pending.append(chunk)
                    pending_size += len(chunk)
                    if pending_size >= _WRITE_BATCH:
                        if len(in_flight) >= _IN_FLIGHT:
                            await in_flight.popleft()
                        block = b"".join(pending)
                        in_flight.append(loop.run_in_executor(worker, absorb, block, out))
                        pending, pending_size = [], 0
                        job.bytes_received = size
                        if expected_size:
                            job.advance(100.0 * size / expected_size)
                if pending:
                    in_flight.append(loop.run_in_executor(worker, absorb, b"".join(pending), out))
            finally:
                # Every batch handed over finishes (or fails) before the file is closed.
                results = await asyncio.gather(*in_flight, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
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
