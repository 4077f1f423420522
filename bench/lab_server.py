"""The lab benchmarks' server (the boot disk imported) and what they share."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from bench.server import REPO, OnServer, running_server
from virtlab.devtools.bootdisk import build_boot_disk

RAM_MB = 128  # ring10.yaml's, and the throughput guests'
BOOT_TIMEOUT = 900.0


def run_list(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def tests_on_path() -> None:
    """tests/ on the path: the tests' helpers (server, serial shell) are the bench's too."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)


# -- the server and its boot image ----------------------------------------------------------------


@dataclass
class Bench(OnServer):
    base: Path  # its file in DATA/images


@contextlib.contextmanager
def lab_server(workdir: Path, env: dict[str, str] | None = None) -> Iterator[Bench]:
    """The server with the boot disk imported; every node's QEMU is killed at the end."""
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    disk = build_boot_disk(workdir / "boot.img")
    with running_server(data, env) as server:
        try:
            with httpx.Client(base_url=server.url, headers=server.headers, timeout=300) as client:
                reply = client.put("/api/images/boot.img", content=disk.read_bytes())
                reply.raise_for_status()
                image = reply.json()["name"]
                info = client.get(f"/api/images/{image}")
                info.raise_for_status()
            disk.unlink()
            yield Bench(server, image, data / "images" / info.json()["path"])
        finally:
            server.kill_nodes()
            disk.unlink(missing_ok=True)


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def kill_qemus(pids: list[int]) -> None:
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if "qemu" in proc.name():
                proc.send_signal(signal.SIGKILL)
                procs.append(proc)
    psutil.wait_procs(procs, timeout=30)
