"""Many nodes started at once: benchmark (3) of ``python -m bench.nodes``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
from websockets.asyncio.client import connect

from bench.node_lab import RAM_MB, Lab, _spec, _until_marker, _ws_url
from bench.sampling import RssSampler

__all__ = ["ManyResult", "bench_many"]


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


@dataclass
class ManyResult:
    count: int
    create: float = 0.0  # creating them, one after another (context)
    started: list[float] = field(default_factory=list)  # per node: t0 .. its start reply
    marker: list[float] = field(default_factory=list)  # per node: t0 .. its marker
    rss_before: int = 0
    rss_after: int = 0  # all markers in, WebSockets still open
    rss_closed: int = 0  # WebSockets closed, nodes still running
    rss_peak: int = 0
    qemu_rss: int = 0  # all the nodes' QEMU processes together, at the end (context)
    failures: list[str] = field(default_factory=list)

    @property
    def all_reached(self) -> bool:
        return not self.failures and len(self.marker) == self.count

    @property
    def all_markers(self) -> float:
        return max(self.marker) if self.marker else float("nan")

    @property
    def per_node(self) -> float:
        return (self.rss_after - self.rss_before) / self.count

    def report(self) -> str:
        n = self.count
        lines = [
            f"{n} nodes started at once ({RAM_MB} MiB each, concurrent POST .../start)",
            f"  created (one by one)  : {self.create:7.2f} s   ({1000 * self.create / n:.0f} ms "
            "per node)",
        ]
        if self.started:
            lines.append(
                f"  start replies         : {max(self.started):7.2f} s until the last   (median "
                f"{statistics.median(self.started):.2f} s)"
            )
        if self.marker:
            lines.append(
                f"  boot markers          : {self.all_markers:7.2f} s until the last   (first "
                f"{min(self.marker):.2f} s, median {statistics.median(self.marker):.2f} s)"
            )
        lines += [
            f"  all {n} reach the marker: {'yes' if self.all_reached else 'NO'}"
            + (f"   ({len(self.marker)} did; {'; '.join(self.failures[:3])})" if self.failures
               else ""),
            f"  server RSS            : {_mb(self.rss_before)} before, {_mb(self.rss_after)} "
            f"with {n} running nodes and their consoles open (peak {_mb(self.rss_peak)}), "
            f"{_mb(self.rss_closed)} once the WebSockets closed",
            f"  server memory per node: {self.per_node / 1e3:,.0f} kB   ((after - before) / {n}; "
            f"{(self.rss_closed - self.rss_before) / n / 1e3:,.0f} kB once no console client is "
            "connected)",
            f"  context: QEMU RSS     : {_mb(self.qemu_rss / n)} per node ({_mb(self.qemu_rss)} "
            "together; not the server's)",
        ]  # fmt: skip
        return "\n".join(lines)


def _own_rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


async def _many(lab: Lab, nodes: list[dict[str, Any]], result: ManyResult, timeout: float) -> None:
    pid = lab.server.proc.pid  # type: ignore[union-attr]
    closed = asyncio.Event()
    settled: dict[str, asyncio.Event] = {n["id"]: asyncio.Event() for n in nodes}
    limits = httpx.Limits(max_connections=len(nodes) + 4)
    async with httpx.AsyncClient(
        base_url=lab.url, headers=lab.headers, timeout=timeout, limits=limits
    ) as client:

        async def one(node: dict[str, Any], t0: float) -> None:
            try:
                reply = await client.post(f"/api/nodes/{node['id']}/start")
                result.started.append(time.perf_counter() - t0)
                if reply.status_code != 200:
                    raise RuntimeError(f"{node['name']}: start {reply.status_code} {reply.text}")
                async with connect(
                    _ws_url(lab.url, node), additional_headers=lab.headers, max_queue=None
                ) as ws:
                    await _until_marker(ws, node["name"])
                    result.marker.append(time.perf_counter() - t0)
                    settled[node["id"]].set()
                    await closed.wait()  # keep the console open until everyone is measured
            finally:
                settled[node["id"]].set()

        await asyncio.sleep(0.5)
        result.rss_before = _own_rss(pid)
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(one(n, t0)) for n in nodes]
        try:
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in settled.values())), timeout)
        except TimeoutError:
            late = len(nodes) - sum(e.is_set() for e in settled.values())
            result.failures.append(f"{late} showed nothing conclusive within {timeout:g} s")
        result.rss_after = _own_rss(pid)
        closed.set()
        for task in tasks:
            if not task.done():
                task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception):
                result.failures.append(str(outcome)[:200])
        await asyncio.sleep(0.5)
        result.rss_closed = _own_rss(pid)


def _warm(lab: Lab) -> None:
    """One node booted to its marker and disposed of: the server's code paths are in."""

    async def boot() -> str:
        async with httpx.AsyncClient(base_url=lab.url, headers=lab.headers, timeout=120) as client:
            node = (await client.post("/api/nodes", json=_spec(lab.name("w"), lab.image))).json()
            (await client.post(f"/api/nodes/{node['id']}/start")).raise_for_status()
            async with connect(_ws_url(lab.url, node), additional_headers=lab.headers) as ws:
                await asyncio.wait_for(_until_marker(ws, node["name"]), 120)
        return node["id"]

    lab.dispose(asyncio.run(boot()))
    lab.warmed = True


def bench_many(lab: Lab, count: int, timeout: float = 900) -> ManyResult:
    if not lab.warmed:
        _warm(lab)
    result = ManyResult(count)
    nodes: list[dict[str, Any]] = []
    try:
        with httpx.Client(base_url=lab.url, headers=lab.headers, timeout=120) as client:
            start = time.perf_counter()
            for _ in range(count):
                reply = client.post("/api/nodes", json=_spec(lab.name("m"), lab.image))
                if reply.status_code != 201:
                    raise RuntimeError(f"POST /api/nodes: {reply.status_code} {reply.text}")
                nodes.append(reply.json())
            result.create = time.perf_counter() - start
        sampler = RssSampler(lab.server.proc.pid, interval=0.1).start()  # type: ignore[union-attr]
        try:
            asyncio.run(_many(lab, nodes, result, timeout))
        finally:
            sampler.stop()
        result.rss_peak = sampler.peak()[0]
        for node in nodes:
            with contextlib.suppress(OSError, ValueError, psutil.Error):
                result.qemu_rss += _own_rss(lab.qemu_pid(node["id"]))
    finally:
        _kill_all(lab, nodes)
    return result


def _kill_all(lab: Lab, nodes: list[dict[str, Any]]) -> None:
    async def kill() -> None:
        async with httpx.AsyncClient(base_url=lab.url, headers=lab.headers, timeout=120) as client:
            await asyncio.gather(
                *(client.post(f"/api/nodes/{n['id']}/kill") for n in nodes),
                return_exceptions=True,
            )
            await asyncio.gather(
                *(client.delete(f"/api/nodes/{n['id']}") for n in nodes), return_exceptions=True
            )

    asyncio.run(kill())
    for node in nodes:  # whatever the API said: no QEMU outlives the benchmark
        with contextlib.suppress(OSError, ValueError):
            os.kill(lab.qemu_pid(node["id"]), signal.SIGKILL)
