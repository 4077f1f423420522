"""Where an upload's time goes: the same body through uvicorn, with more and more work per chunk.

Not a target benchmark: a tool to explain ``bench/upload.py``. A small ASGI app (FastAPI, like
virtlab's) is served by ``uvicorn`` with the ``--http``/``--loop`` asked for, and the same file
is PUT to each route in turn (sendfile client, best and median of ``--runs``, routes in
alternating order), next to ``cp`` of the file:

    /drain      read the body, nothing else: the ceiling for any receive loop on this stack
    /hash       sha256 of every chunk on the event loop
    /write      chunks gathered to 4 MiB and written, on the event loop
    /receive    virtlab's own ``virtlab.images.receive.receive`` (whatever is in the tree)
    /pipelined  the change proposed in docs/benchmarks.md: 1 MiB batches handed to one worker
                thread that hashes and writes them (hashlib and write release the GIL), at
                most 4 batches in flight

    python -m bench.upload_paths --size-mib 1024 --runs 5 --http httptools --loop uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import FastAPI, Request

from bench.clients import upload
from bench.files import MiB, prepare_cache, write_random
from virtlab.images.progress import ImportJob
from virtlab.images.receive import receive

__all__ = ["ROUTES", "app", "main", "measure"]

ROUTES = ("/drain", "/hash", "/write", "/receive", "/pipelined")
app = FastAPI()
_SINK = Path(os.environ.get("VIRTLAB_BENCH_SINK", tempfile.gettempdir()))


@app.put("/drain")
async def drain(request: Request) -> dict[str, int]:
    size = chunks = 0
    async for chunk in request.stream():
        size += len(chunk)
        chunks += 1
    return {"size": size, "chunks": chunks}


@app.put("/hash")
async def hash_only(request: Request) -> dict[str, str]:
    digest = hashlib.sha256()
    async for chunk in request.stream():
        digest.update(chunk)
    return {"sha256": digest.hexdigest()}


@app.put("/write")
async def write_only(request: Request) -> dict[str, int]:
    dest = _SINK / f"write-{os.getpid()}"
    pending: list[bytes] = []
    pending_size = size = 0
    try:
        with dest.open("wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= 4 * MiB:
                    out.write(b"".join(pending))
                    pending, pending_size = [], 0
            out.write(b"".join(pending))
    finally:
        dest.unlink(missing_ok=True)
    return {"size": size}


@app.put("/receive")
async def virtlab_receive(request: Request) -> dict[str, str]:
    dest = _SINK / f"receive-{os.getpid()}"
    try:
        got = await receive(
            request.stream(), dest, label="bench", max_bytes=1 << 50, job=ImportJob("b", "b")
        )
    finally:
        dest.unlink(missing_ok=True)
    return {"sha256": got.sha256}


@app.put("/pipelined")
async def pipelined(request: Request) -> dict[str, str]:
    loop = asyncio.get_running_loop()
    digest = hashlib.sha256()
    dest = _SINK / f"pipelined-{os.getpid()}"
    in_flight: collections.deque[asyncio.Future[None]] = collections.deque()
    pending: list[bytes] = []
    pending_size = 0
    try:
        with dest.open("wb") as out, ThreadPoolExecutor(1) as worker:

            def absorb(block: bytes) -> None:
                digest.update(block)
                out.write(block)

            async def hand_over(block: bytes) -> None:
                if len(in_flight) >= 4:
                    await in_flight.popleft()
                in_flight.append(loop.run_in_executor(worker, absorb, block))

            async for chunk in request.stream():
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= MiB:
                    await hand_over(b"".join(pending))
                    pending, pending_size = [], 0
            await hand_over(b"".join(pending))
            while in_flight:
                await in_flight.popleft()
    finally:
        dest.unlink(missing_ok=True)
    return {"sha256": digest.hexdigest()}


def _serve(http: str, loop: str, sink: Path) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.upload_paths:app", "--host", "127.0.0.1",
         "--port", str(port), "--http", http, "--loop", loop, "--log-level", "warning"],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "VIRTLAB_BENCH_SINK": str(sink)},
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("uvicorn did not start")


def measure(
    workdir: Path,
    *,
    size: int,
    runs: int,
    http: str = "httptools",
    loop: str = "uvloop",
    routes: tuple[str, ...] = ROUTES,
) -> dict[str, list[float]]:
    """Bytes per second of each route, and of ``cp``, for every run."""
    src = write_random(workdir / "paths.img", size)
    speeds: dict[str, list[float]] = {route: [] for route in (*routes, "cp")}
    proc, port = _serve(http, loop, workdir)
    try:
        for i in range(runs):
            for route in routes if i % 2 == 0 else routes[::-1]:
                prepare_cache(src)
                start = time.perf_counter()
                reply = upload("sendfile", f"http://127.0.0.1:{port}{route}", src)
                seconds = time.perf_counter() - start
                if reply.status != 200:
                    raise RuntimeError(f"{route}: {reply.status} {reply.body[:300]!r}")
                speeds[route].append(size / seconds)
            prepare_cache(src)
            start = time.perf_counter()
            subprocess.run(["cp", str(src), str(workdir / "cp-copy")], check=True)
            speeds["cp"].append(size / (time.perf_counter() - start))
            (workdir / "cp-copy").unlink()
    finally:
        proc.terminate()
        proc.wait(30)
        src.unlink(missing_ok=True)
    return speeds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upload_paths", description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--http", choices=("httptools", "h11"), default="httptools")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temp dir")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="virtlab-bench-", dir=args.workdir) as tmp:
        speeds = measure(
            Path(tmp), size=args.size_mib * MiB, runs=args.runs, http=args.http, loop=args.loop
        )
    cp = max(speeds["cp"])
    print(
        f"{args.size_mib} MiB, uvicorn --http {args.http} --loop {args.loop}, best of "
        f"{args.runs}; load avg {os.getloadavg()[0]:.2f}"
    )
    for route, values in speeds.items():
        print(
            f"  {route:<10} best {max(values) / 1e6:6,.0f} MB/s  median "
            f"{statistics.median(values) / 1e6:6,.0f} MB/s  ({max(values) / cp:.2f} x cp)"
        )


if __name__ == "__main__":
    main()
