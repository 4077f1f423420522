"""API latency under load: 50 concurrent clients, quiet and while an import converts and 10
nodes run.

One server (the tiny boot disk imported). Each client is an ``httpx.AsyncClient`` of its own
(its own connection) sending, one after the other, the requests a UI and scripts make:
list nodes, one node, list images, the lab, list imports, and a ``PATCH`` of a node's position
(a catalog write). Every request's latency is recorded.

(1) quiet: the clients alone, ``--requests`` each.
(2) loaded: ``--nodes`` nodes (the boot disk, 96 MiB) started and running, then a VMDK
    (``--data-mib`` of data) uploaded with ``PUT``; the clients start once the import reaches
    its convert stage (an event on /api/events) and go on until the import is done, at least
    ``--requests`` each.
Printed for each: p50, p99 and the worst latency, failed requests (any status but 200), and the
server's event-loop watchdog (``GET /api/server/loop``): its worst lag and its stalls by kind
(blocked: asleep in a system call; waiting: for the interpreter lock; busy: running or waiting
for a CPU). The ratio is p99 loaded / p99 quiet: the same requests on the same server, with
and without the work. Target (issue 5): no request fails and no stall is ``blocked``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

from bench.files import MiB, write_random
from bench.lab_server import Bench, lab_server
from bench.server import server_env

__all__ = ["LoadResult", "bench_load", "main"]

RAM_MB = 96


@dataclass
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)
    failures: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    loop: dict[str, Any] = field(default_factory=dict)  # the watchdog's report after it

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0

    def line(self) -> str:
        n = len(self.latencies)
        return (
            f"  {self.name:<7}: {n:5d} requests in {self.seconds:5.1f} s, p50 "
            f"{1000 * statistics.median(self.latencies):6.1f} ms, p99 {1000 * self.pct(0.99):6.1f}"
            f" ms, worst {1000 * max(self.latencies):7.1f} ms, failed {sum(self.failures.values())}"
        )


@dataclass
class LoadResult:
    clients: int
    nodes: int
    data_mib: int
    quiet: Phase
    loaded: Phase
    import_seconds: float = 0.0

    @property
    def ratio(self) -> float:
        return self.loaded.pct(0.99) / self.quiet.pct(0.99)

    def report(self) -> str:
        loop = self.loaded.loop
        blocked = [s for s in loop.get("stalls", []) if s["how"] == "blocked"]
        failed = sum(self.quiet.failures.values()) + sum(self.loaded.failures.values())
        lines = [
            f"API latency, {self.clients} concurrent clients (quiet; then while a VMDK of "
            f"{self.data_mib} MiB of data converts and {self.nodes} nodes run)",
            self.quiet.line(),
            self.loaded.line(),
            f"  import   : {self.import_seconds:5.1f} s (upload to registered, under the load)",
            f"  ratio p99 loaded / quiet: {self.ratio:6.2f}",
            f"  event loop: worst lag {loop.get('max_lag_ms', 0):.0f} ms; stalls over "
            f"{loop.get('threshold_ms', 0):.0f} ms: blocked {loop.get('blocked', 0)}, waiting "
            f"{loop.get('waiting', 0)}, busy {loop.get('busy', 0)}",
            f"  target: no request fails, no blocked stall: "
            f"{'met' if not failed and not blocked else 'NOT met'}",
        ]
        lines += [
            f"    blocked {s['ms']:.0f} ms in {s['syscall']} at {s['where']}" for s in blocked
        ]
        for kind, what in self.loaded.failures.most_common(5):
            lines.append(f"    failed x{what}: {kind}")
        return "\n".join(lines)


def _plan(node_ids: list[str], lab: str, n: int) -> list[tuple[str, str, Any]]:
    node = node_ids[n % len(node_ids)] if node_ids else None
    plan: list[tuple[str, str, Any]] = [
        ("GET", "/api/nodes", None),
        ("GET", "/api/images", None),
        ("GET", f"/api/labs/{lab}", None),
        ("GET", "/api/imports", None),
    ]
    if node:
        plan += [
            ("GET", f"/api/nodes/{node}", None),
            ("PATCH", f"/api/nodes/{node}", {"position": {"x": n, "y": n}}),
        ]
    return plan


async def _client(
    bench: Bench, n: int, plan: list, least: int, done: asyncio.Event, phase: Phase
) -> None:
    async with httpx.AsyncClient(base_url=bench.url, headers=bench.headers, timeout=300) as c:
        sent = 0
        while sent < least or not done.is_set():
            method, path, body = plan[sent % len(plan)]
            t0 = time.perf_counter()
            reply = await c.request(method, path, json=body)
            phase.latencies.append(time.perf_counter() - t0)
            if reply.status_code != 200:
                phase.failures[f"{method} {path}: {reply.status_code} {reply.text[:160]}"] += 1
            sent += 1


async def _clients(
    bench: Bench, phase: Phase, plans: list[list], least: int, done: asyncio.Event
) -> None:
    t0 = time.perf_counter()
    await asyncio.gather(
        *(_client(bench, n, plan, least, done, phase) for n, plan in enumerate(plans))
    )
    phase.seconds = time.perf_counter() - t0


def _loop(bench: Bench) -> dict[str, Any]:
    with httpx.Client(base_url=bench.url, headers=bench.headers, timeout=60) as client:
        reply = client.get("/api/server/loop")
        reply.raise_for_status()
        return reply.json()


async def _loaded(bench: Bench, vmdk: Path, plans: list[list], least: int) -> tuple[Phase, float]:
    phase = Phase("loaded")
    done = asyncio.Event()

    def upload() -> float:
        t0 = time.perf_counter()
        with httpx.Client(base_url=bench.url, headers=bench.headers, timeout=3600) as c:
            c.put("/api/images/load.vmdk", content=vmdk.read_bytes()).raise_for_status()
        return time.perf_counter() - t0

    async with connect(bench.server.ws_url("/api/events"), additional_headers=bench.headers) as ws:
        uploading = asyncio.create_task(asyncio.to_thread(upload))
        while True:  # until the import converts
            event = json.loads(await asyncio.wait_for(ws.recv(), 600))
            if event.get("kind") == "import" and event.get("source_name") == "load.vmdk":
                if event.get("state") == "failed":
                    raise RuntimeError(f"the import failed: {event}")
                if event.get("stage") == "convert":
                    break
        load = asyncio.create_task(_clients(bench, phase, plans, least, done))
        try:
            seconds = await uploading
        finally:
            done.set()
            await load
    return phase, seconds


def bench_load(
    workdir: Path,
    *,
    clients: int = 50,
    nodes: int = 10,
    requests: int = 30,
    data_mib: int = 1024,
    server_env: dict[str, str] | None = None,
    report: bool = False,
) -> LoadResult:
    workdir.mkdir(parents=True, exist_ok=True)
    raw = write_random(workdir / "load.raw", data_mib * MiB, total=2 * data_mib * MiB)
    vmdk = workdir / "load.vmdk"
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "vmdk", str(raw), str(vmdk)], check=True
    )
    raw.unlink()
    with lab_server(workdir, server_env) as bench:
        with httpx.Client(base_url=bench.url, headers=bench.headers, timeout=300) as c:
            c.post("/api/labs", json={"name": "load"}).raise_for_status()
        quiet = Phase("quiet")
        done = asyncio.Event()
        done.set()
        asyncio.run(
            _clients(bench, quiet, [_plan([], "load", n) for n in range(clients)], requests, done)
        )
        quiet.loop = _loop(bench)
        node_ids = _start_nodes(bench, nodes)
        plans = [_plan(node_ids, "load", n) for n in range(clients)]
        loaded, seconds = asyncio.run(_loaded(bench, vmdk, plans, requests))
        loaded.loop = _loop(bench)
    result = LoadResult(clients, nodes, data_mib, quiet, loaded, seconds)
    if report:
        print("\n" + result.report(), flush=True)
    return result


def _start_nodes(bench: Bench, count: int) -> list[str]:
    ids = []
    with httpx.Client(base_url=bench.url, headers=bench.headers, timeout=300) as c:
        for i in range(count):
            spec = {"name": f"n{i}", "image": bench.image, "ram_mb": RAM_MB, "lab": "load"}
            made = c.post("/api/nodes", json=spec)
            made.raise_for_status()
            ids.append(made.json()["id"])
        for node in ids:
            c.post(f"/api/nodes/{node}/start").raise_for_status()
    return ids


def main(argv: list[str] | None = None) -> LoadResult:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--requests", type=int, default=30, help="at least, per client")
    parser.add_argument("--data-mib", type=int, default=1024, help="data in the imported VMDK")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temp dir")
    parser.add_argument("--server-src", type=Path, help="run the server from this src/ (A/B)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="virtlab-bench-", dir=args.workdir) as tmp:
        return bench_load(
            Path(tmp), clients=args.clients, nodes=args.nodes, requests=args.requests,
            data_mib=args.data_mib, server_env=server_env(args.server_src), report=True,
        )  # fmt: skip


if __name__ == "__main__":
    main()
