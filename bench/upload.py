"""Upload throughput over loopback against ``cp`` of the same file, and the server's memory.

The file: ``--size`` bytes (default 4 GiB) of incompressible data, written once. Its first bytes
are a gzip magic with an unknown compression method, so the server refuses it (422) right after
the upload stage instead of spending most of a minute per run converting 4 GiB; the upload
stage never looks at the content, so what it measures is the same as for any other file.

(a) virtlab: ``PUT /api/images/NAME`` with the client ``--client`` (default: the fastest honest
    one, ``sendfile``); the time from connecting until the server's import job leaves its
    ``upload`` stage (``GET /api/imports/{id}``, polled every 5 ms once the client has sent its
    last byte, so polling costs nothing during the upload). The bytes are then written in
    DATA/staging/<id>/upload, sha256 computed.
(b) ``cp SRC DATA/cp-copy`` on the data directory's file system (GNU cp 9: copy_file_range,
    an in-kernel copy); also shown, not in the ratio: ``cp --reflink=never`` (read/write).

The ratio is the throughput of (a) over (b) (so time_b / time_a); the issue's target is at
least 0.7. The server's resident memory (its process and any children) is sampled every 50 ms
with psutil during the upload; the target is a peak under 200 MB.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.clients import CLIENTS, DEFAULT_CLIENT, new_import_id, upload
from bench.files import GiB, MiB, human_bytes, prepare_cache, rate, write_random
from bench.sampling import RssSampler, StagePoller
from bench.server import running_server, server_env

__all__ = ["UploadResult", "bench_upload", "main"]

TARGET_RATIO = 0.7
TARGET_RSS = 200 * 1000 * 1000  # "200 MB"
_HEAD = b"\x1f\x8b\x00"  # gzip, compression method 0: refused by the unpack stage at once


@dataclass
class UploadRun:
    seconds: float  # connect .. the server left its upload stage
    sent: float  # connect .. the client's last byte handed to the kernel
    status: int
    peak_rss: int  # the server process
    peak_rss_total: int  # with its children


@dataclass
class UploadResult:
    size: int
    client: str
    baseline_rss: int = 0
    uploads: list[UploadRun] = field(default_factory=list)
    cp: list[float] = field(default_factory=list)
    cp_rw: list[float] = field(default_factory=list)

    @property
    def best_upload(self) -> UploadRun:
        return min(self.uploads, key=lambda r: r.seconds)

    @property
    def ratio(self) -> float:
        """Upload throughput / cp throughput."""
        return min(self.cp) / self.best_upload.seconds

    @property
    def peak_rss(self) -> int:
        """The highest RSS of the server with its children (it has none while it receives)."""
        return max(r.peak_rss_total for r in self.uploads)

    def report(self) -> str:
        up, cp, cp_rw = self.best_upload, min(self.cp), min(self.cp_rw)
        size = self.size
        return "\n".join(
            [
                f"upload of {human_bytes(size)} of random data over loopback; best of "
                f"{len(self.uploads)} (client: {self.client})",
                f"  virtlab upload stage  : {up.seconds:7.2f} s  {rate(size, up.seconds):>12}   "
                f"(runs: {', '.join(f'{r.seconds:.2f}' for r in self.uploads)}; client done "
                f"sending after {up.sent:.2f} s)",
                f"  cp                    : {cp:7.2f} s  {rate(size, cp):>12}   "
                f"(runs: {', '.join(f'{t:.2f}' for t in self.cp)})",
                f"  cp --reflink=never    : {cp_rw:7.2f} s  {rate(size, cp_rw):>12}   "
                f"(runs: {', '.join(f'{t:.2f}' for t in self.cp_rw)}; not in the ratio)",
                f"  ratio upload / cp     : {self.ratio:7.3f}   (target >= {TARGET_RATIO}: "
                f"{'met' if self.ratio >= TARGET_RATIO else 'NOT met'}); against cp "
                f"--reflink=never: {cp_rw / up.seconds:.3f}",
                f"  server RSS            : {self.baseline_rss / 1e6:.0f} MB idle, peak "
                f"{self.peak_rss / 1e6:.0f} MB during the uploads (target < "
                f"{TARGET_RSS / 1e6:.0f} MB: {'met' if self.peak_rss < TARGET_RSS else 'NOT met'})",
            ]
        )


def run_upload(base_url: str, pid: int, src: Path, client: str) -> UploadRun:
    import_id = new_import_id()
    sent = threading.Event()
    sent_at: list[float] = []

    def on_sent() -> None:
        sent_at.append(time.perf_counter())
        sent.set()

    poller = StagePoller(base_url, import_id, interval=0.005, after=sent).start()
    rss = RssSampler(pid, interval=0.05).start()
    start = time.perf_counter()
    try:
        reply = upload(
            client, f"{base_url}/api/images/{src.name}?import_id={import_id}", src, on_sent
        )
        left = poller.wait_left_upload()
    finally:
        poller.stop()
        rss.stop()
    if left is None:
        raise RuntimeError(f"the import never left its upload stage: {poller.last}")
    if poller.last.get("bytes_received") != src.stat().st_size:
        raise RuntimeError(f"the server did not receive the whole file: {poller.last}")
    own, total = rss.peak(start, left)
    return UploadRun(left - start, sent_at[0] - start, reply.status, own, total)


def run_cp(src: Path, dst: Path, *flags: str) -> float:
    try:
        start = time.perf_counter()
        subprocess.run(["cp", *flags, str(src), str(dst)], check=True)
        return time.perf_counter() - start
    finally:
        dst.unlink(missing_ok=True)


def bench_upload(
    workdir: Path,
    *,
    size: int = 4 * GiB,
    runs: int = 3,
    client: str = DEFAULT_CLIENT,
    server_env: dict[str, str] | None = None,
) -> UploadResult:
    """Run the benchmark in ``workdir`` (source file and the server's data directory)."""
    workdir.mkdir(parents=True, exist_ok=True)
    src = write_random(workdir / "upload.img", size, head=_HEAD)
    result = UploadResult(size, client)
    try:
        with running_server(workdir / "data", server_env) as server:
            assert server.proc is not None
            dst = workdir / "data" / "cp-copy"
            idle = RssSampler(server.proc.pid)
            idle.sample()
            result.baseline_rss = idle.samples[0][1]
            for i in range(runs):
                order = ("upload", "cp", "cp_rw") if i % 2 == 0 else ("cp_rw", "cp", "upload")
                for side in order:
                    prepare_cache(src)
                    if side == "upload":
                        result.uploads.append(run_upload(server.url, server.proc.pid, src, client))
                    elif side == "cp":
                        result.cp.append(run_cp(src, dst))
                    else:
                        result.cp_rw.append(run_cp(src, dst, "--reflink=never"))
    finally:
        src.unlink(missing_ok=True)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=3, help="runs per side (best is kept)")
    parser.add_argument("--size-mib", type=int, default=4096, help="file size, MiB")
    parser.add_argument("--client", choices=sorted(CLIENTS), default=DEFAULT_CLIENT)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temp dir")
    parser.add_argument("--server-src", type=Path, help="run the server from this src/ (A/B)")


def main(argv: list[str] | None = None) -> UploadResult:
    parser = argparse.ArgumentParser(prog="python -m bench.upload", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="virtlab-bench-", dir=args.workdir) as tmp:
        result = bench_upload(
            Path(tmp),
            size=args.size_mib * MiB,
            runs=args.runs,
            client=args.client,
            server_env=server_env(args.server_src),
        )
    print(result.report())
    return result


if __name__ == "__main__":
    main()
