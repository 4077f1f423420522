"""Libvirt hosts (issue 6): a node's start on a libvirt host against the same node on the local
host, and a base image pushed to a host against ``cp`` of the same file.

Both run against an isolated ``libvirtd`` on 127.0.0.1 (``tests/support/libvirt_hosts.py``,
plain TCP), so the "network" is loopback: the figures are the overhead of libvirt and of the
push protocol, not of a wire.

- **start**: ``POST /api/nodes`` (``host`` h1 or ``local``) + ``POST …/start`` + the serial
  WebSocket until its first byte; the same node settings, the tiny test disk, TCG on both.
  Ratio: libvirt time / local time (best of N each, alternating).
- **push**: :meth:`HostStorage.push_base` of a file of random data (upload through
  ``virStorageVolUpload``, then read back through libvirt and hashed), the catalog's sha256
  given (as the server gives it); against ``cp`` of the same file into the host's pool folder.
  Ratio: push time / ``cp`` time.

Run: ``python -m bench.hosts [--push-mib 1024] [--runs 3]`` (needs root, libvirtd, virtlogd).
The push is 1 GiB unless ``--push-mib`` says less (``tests/test_bench_hosts_smoke.py``: 8).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from websockets.asyncio.client import connect

from bench.files import MiB, prepare_cache, write_random
from bench.server import REPO, running_server
from virtlab.devtools.bootdisk import build_boot_disk

__all__ = ["HostsResult", "bench_hosts", "have_libvirtd"]


def _support() -> Any:
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import support.libvirt_hosts as hosts  # importable once tests/ is on the path

    return hosts


def have_libvirtd() -> bool:
    return bool(_support().have_libvirtd())


@dataclass
class HostsResult:
    local: list[float] = field(default_factory=list)
    remote: list[float] = field(default_factory=list)
    push: list[float] = field(default_factory=list)
    cp: list[float] = field(default_factory=list)
    push_bytes: int = 0
    costs: dict[str, float] = field(default_factory=dict)  # per running node on a host

    @property
    def start_ratio(self) -> float:
        return min(self.remote) / min(self.local)

    @property
    def push_ratio(self) -> float:
        return min(self.push) / min(self.cp)

    def report(self) -> str:
        mib = self.push_bytes / MiB
        return "\n".join([
            "libvirt hosts",
            f"  start, local host : best {min(self.local):.3f} s  runs {_runs(self.local)}",
            f"  start, libvirt h1 : best {min(self.remote):.3f} s  runs {_runs(self.remote)}",
            f"  start ratio (libvirt / local): {self.start_ratio:.2f}",
            f"  push {mib:.0f} MiB     : best {min(self.push):.2f} s "
            f"({mib / min(self.push):.0f} MiB/s)  runs {_runs(self.push)}",
            f"  cp {mib:.0f} MiB       : best {min(self.cp):.2f} s "
            f"({mib / min(self.cp):.0f} MiB/s)  runs {_runs(self.cp)}",
            f"  push ratio (push / cp): {self.push_ratio:.2f}",
            "  per node running on h1 (4 nodes): "
            + ", ".join(f"{k} {v:.1f}" for k, v in self.costs.items()),
        ])  # fmt: skip


def _runs(values: list[float]) -> str:
    return " ".join(f"{v:.3f}" for v in values)


async def _start_once(url: str, headers: dict[str, str], image: str, name: str, host: str) -> float:
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300) as client:
        began = time.perf_counter()
        made = await client.post(
            "/api/nodes", json={"name": name, "image": image, "ram_mb": 128, "host": host}
        )
        made.raise_for_status()
        node = made.json()
        (await client.post(f"/api/nodes/{node['id']}/start")).raise_for_status()
        ws_url = url.replace("http", "ws", 1) + node["consoles"]["serial"]["ws"]
        async with connect(ws_url, additional_headers=headers) as ws:
            while not await ws.recv():
                pass
        took = time.perf_counter() - began
        (await client.post(f"/api/nodes/{node['id']}/kill")).raise_for_status()
        (await client.delete(f"/api/nodes/{node['id']}")).raise_for_status()
        return took


async def _push_once(uri: str, path: Path, digest: str) -> float:
    from virtlab.hosts.connection import HostConnection
    from virtlab.hosts.volumes import HostStorage

    host = HostConnection("h1", uri)
    await host.open()
    try:
        storage = HostStorage(host)
        await storage.pool()  # made once, not timed
        began = time.perf_counter()
        base = await storage.push_base(path, digest)
        took = time.perf_counter() - began
        await storage._delete(base.name + ".sha256")  # the next run pushes again
        await storage._delete(base.name)
        return took
    finally:
        await host.close()


def _costs(server: Any, h1: Any, image: str, count: int) -> dict[str, float]:
    """What each running node on a host costs: the server's open files and memory, the host
    daemon's memory, the guest's QEMU memory (``count`` nodes started, then killed)."""
    proc, daemon = psutil.Process(server.proc.pid), psutil.Process(h1.daemon.pid)
    before = (proc.num_fds(), proc.memory_info().rss, daemon.memory_info().rss)
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=300) as client:
        ids = []
        for i in range(count):
            body = {"name": f"c{i}", "image": image, "ram_mb": 128, "host": "h1"}
            made = client.post("/api/nodes", json=body)
            made.raise_for_status()
            ids.append(made.json()["id"])
            client.post(f"/api/nodes/{ids[-1]}/start").raise_for_status()
        after = (proc.num_fds(), proc.memory_info().rss, daemon.memory_info().rss)
        qemu = sum(psutil.Process(p).memory_info().rss for p in h1.qemu_pids().values())
        for node_id in ids:
            client.post(f"/api/nodes/{node_id}/kill").raise_for_status()
            client.delete(f"/api/nodes/{node_id}").raise_for_status()
    return {
        "server fds": (after[0] - before[0]) / count,
        "server MB": (after[1] - before[1]) / count / MiB,
        "libvirtd MB": (after[2] - before[2]) / count / MiB,
        "QEMU MB": qemu / count / MiB,
    }


@contextlib.contextmanager
def _host(workdir: Path) -> Iterator[Any]:
    support = _support()
    with support.LibvirtHost.start(workdir / "h1") as h1:
        yield h1


def file_sha256(path: Path) -> str:
    from virtlab.hosts.volumes import file_sha256 as digest

    return digest(path)


def bench_hosts(workdir: Path, *, runs: int, push_size: int, env: dict[str, str]) -> HostsResult:
    result = HostsResult(push_bytes=push_size)
    with _host(workdir) as h1:
        data = workdir / "data"
        with running_server(data, {**env, "VIRTLAB_ACCEL": "tcg"}) as server:
            try:
                with httpx.Client(base_url=server.url, headers=server.headers, timeout=300) as c:
                    disk = build_boot_disk(workdir / "boot.img")
                    image = c.put("/api/images/boot.img", content=disk.read_bytes())
                    image.raise_for_status()
                    added = c.post("/api/hosts", json={"name": "h1", "uri": h1.uri})
                    added.raise_for_status()
                name = image.json()["name"]
                # One start on each side first, not counted: the base reaches h1 once.
                for host in ("h1", "local"):
                    asyncio.run(_start_once(server.url, server.headers, name, "warm", host))
                result.costs = _costs(server, h1, name, count=4)
                for i in range(runs):
                    order = ("local", "h1") if i % 2 == 0 else ("h1", "local")
                    for host in order:
                        took = asyncio.run(
                            _start_once(server.url, server.headers, name, f"n{i}", host)
                        )
                        (result.local if host == "local" else result.remote).append(took)
            finally:
                server.kill_nodes()
        source = write_random(workdir / "push.raw", push_size)
        digest = file_sha256(source)
        for i in range(runs):
            for side in ("push", "cp") if i % 2 == 0 else ("cp", "push"):
                prepare_cache(source)
                if side == "push":
                    result.push.append(asyncio.run(_push_once(h1.uri, source, digest)))
                else:
                    target = h1.folder("lib") / "virtlab" / "cp-copy.raw"
                    began = time.perf_counter()
                    subprocess.run(["cp", str(source), str(target)], check=True)
                    result.cp.append(time.perf_counter() - began)
                    target.unlink()
        source.unlink()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hosts", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--push-mib", type=int, default=1024, help="MiB pushed [1024]")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vb-", dir=args.workdir) as tmp:
        result = bench_hosts(Path(tmp), runs=args.runs, push_size=args.push_mib * MiB, env={})
    print(result.report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
