"""Nodes: start-up against bare QEMU, overlay creation against the base's size, many at once.

One server serves the three benchmarks. Before it starts, two base images are dropped into
DATA/images (the start-up scan registers them, as it does any file an administrator puts
there): ``base-small.qcow2``, ``--small-mib`` (default 64) MiB of random data, and
``base-big.qcow2``, an empty 40 GiB qcow2 (``qemu-img create``: instant and sparse). The tiny
bootable test disk (``virtlab.devtools.bootdisk``) is then imported with ``PUT``; every node
boots it under the accelerator the server picked (TCG on these machines), with ``ram_mb`` 128.

(1) Create + start until the first serial byte.
    virtlab: ``POST /api/nodes`` (which makes the overlay), ``POST /api/nodes/{id}/start``,
    then the serial WebSocket ``/api/nodes/{id}/console/serial`` until its first byte (the
    hub keeps a scrollback, so a byte written before the socket connected is not lost).
    bare: the same ``qemu-system-x86_64`` argv, read from ``/proc/<pid>/cmdline`` of a node's
    QEMU (pid from DATA/nodes/<id>/qemu.pid), except that QMP and the serial console are on
    sockets the bare QEMU binds itself (virtlab passes its own as descriptors, ``fd=N``; see
    :func:`bare_argv`), with the node's directory replaced by a scratch directory:
    ``qemu-img create -f qcow2 -b BASE -F qcow2 scratch/disk.qcow2``, QEMU in its own session,
    then its serial unix socket (polled every millisecond until it accepts)
    until the first byte. One untimed warm-up run of each side comes first; then best of
    ``5 x --runs`` (each run is about 0.2 s, its noise tens of ms), the sides alternating.
    Target: virtlab / bare at most 1.10.
(2) Overlay creation: ``POST /api/nodes`` over the 64 MiB base and over the 40 GiB base
    (the reply comes once the overlay exists), against bare ``qemu-img create -b`` over each.
    The four sides alternate; best and median of ``5 x --runs`` each (they are short).
    Target: constant time, the 40 GiB / 64 MiB ratio within noise (0.8 to 1.25).
(3) ``--count`` (default 20) nodes started at once: concurrent ``POST .../start`` from one
    ``httpx.AsyncClient``, then each node's serial WebSocket until :data:`BOOT_MARKER`; the
    time until every node has shown it. The resident memory of the ``virtlab serve`` process
    alone (psutil; QEMU is not its child in memory terms, it runs in its own session) before
    the starts and once all markers are in, with the WebSockets still open, and again once
    they are closed; (after - before) / count is the server's memory per node. QEMU's own
    memory is shown as context. A guest kernel panic on a console makes that node a failure at
    once (under TCG on a small host, a starved guest may fail its timer check). Every node is
    killed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from websockets.asyncio.client import connect

from bench.common import (
    GiB,
    MiB,
    OnServer,
    RssSampler,
    human_bytes,
    running_server,
    server_env,
    write_random,
)
from virtlab.devtools.bootdisk import BOOT_MARKER, build_boot_disk

__all__ = [
    "ManyResult",
    "NodesResult",
    "OverlayResult",
    "StartResult",
    "bench_nodes",
    "main",
]

TARGET_START = 1.10
OVERLAY_NOISE = (0.8, 1.25)  # 40 GiB / 64 MiB: "the same time within noise"
RAM_MB = 128
WHICH = ("start", "overlay", "many")
_MARKER = BOOT_MARKER.encode()
_PANIC = re.compile(rb"Kernel panic - not syncing: ([^\r\n]*)[\r\n]")


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def _runs(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


# -- the lab: one server, the bases, the boot image ---------------------------------------------


@dataclass
class Lab(OnServer):
    small_base: str  # catalog names of the two bases
    big_base: str
    warmed: bool = False  # a node has booted on this server already
    _serial: int = 0

    def name(self, prefix: str) -> str:
        self._serial += 1
        return f"{prefix}{self._serial}"

    def base_path(self, image: str) -> Path:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=30) as client:
            reply = client.get(f"/api/images/{image}")
            reply.raise_for_status()
        return self.data / "images" / reply.json()["path"]

    def dispose(self, node_id: str) -> None:
        """Kill (if it runs) and delete a node; not timed."""
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=120) as client:
            state = client.get(f"/api/nodes/{node_id}").json().get("state")
            if state in ("running", "suspended", "starting", "stopping"):
                client.post(f"/api/nodes/{node_id}/kill").raise_for_status()
            client.delete(f"/api/nodes/{node_id}").raise_for_status()


@contextlib.contextmanager
def node_lab(
    workdir: Path, *, small_size: int, big_size: int, env: dict[str, str] | None = None
) -> Iterator[Lab]:
    """The server over a data directory holding the two bases, with the boot disk imported.
    Every node's QEMU is killed at the end, whatever happened."""
    data = workdir / "data"
    images = data / "images"
    images.mkdir(parents=True, exist_ok=True)
    raw = write_random(workdir / "small.raw", small_size)
    small, big = "base-small.qcow2", "base-big.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(images / small)],
        check=True,
    )
    raw.unlink()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(images / big), str(big_size)], check=True
    )
    disk = build_boot_disk(workdir / "boot.img")
    with running_server(data, env) as server:
        try:
            with httpx.Client(base_url=server.url, headers=server.headers, timeout=300) as client:
                reply = client.put("/api/images/boot.img", content=disk.read_bytes())
                reply.raise_for_status()
                names = {i["name"] for i in client.get("/api/images").json()}
            missing = {small, big} - names
            if missing:
                raise RuntimeError(f"the start-up scan did not register {sorted(missing)}")
            disk.unlink()
            yield Lab(server, reply.json()["name"], small, big)
        finally:
            server.kill_nodes()
            disk.unlink(missing_ok=True)


def _ws_url(base_url: str, node: dict[str, Any]) -> str:
    return base_url.replace("http", "ws", 1) + node["consoles"]["serial"]["ws"]


def _spec(name: str, image: str, ram_mb: int = RAM_MB) -> dict[str, Any]:
    return {"name": name, "image": image, "ram_mb": ram_mb}


# -- (1) create + start until the first serial byte ---------------------------------------------


@dataclass
class VirtlabStart:
    create: float  # POST /api/nodes
    start: float  # POST .../start
    first_byte: float  # start reply .. first byte on the WebSocket

    @property
    def seconds(self) -> float:
        return self.create + self.start + self.first_byte


@dataclass
class BareStart:
    overlay: float  # qemu-img create -b
    socket: float  # spawn .. the serial socket accepts
    first_byte: float  # .. the first byte

    @property
    def seconds(self) -> float:
        return self.overlay + self.socket + self.first_byte


@dataclass
class StartResult:
    accel: str
    argv: list[str] = field(default_factory=list)
    first: bytes = b""
    virtlab: list[VirtlabStart] = field(default_factory=list)
    bare: list[BareStart] = field(default_factory=list)

    @property
    def best_virtlab(self) -> VirtlabStart:
        return min(self.virtlab, key=lambda r: r.seconds)

    @property
    def best_bare(self) -> BareStart:
        return min(self.bare, key=lambda r: r.seconds)

    @property
    def ratio(self) -> float:
        return self.best_virtlab.seconds / self.best_bare.seconds

    def report(self) -> str:
        v, b = self.best_virtlab, self.best_bare
        median = statistics.median(r.seconds for r in self.virtlab) / statistics.median(
            r.seconds for r in self.bare
        )
        return "\n".join(
            [
                f"create + start until the first serial byte ({self.accel}, {RAM_MB} MiB, the "
                f"test disk); best of {len(self.virtlab)}",
                f"  virtlab               : {v.seconds:7.3f} s   (runs: "
                f"{_runs([r.seconds for r in self.virtlab])})",
                f"      {'POST /api/nodes':<18}: {v.create:7.3f} s   (median of the runs: "
                f"{statistics.median(r.create for r in self.virtlab):.3f} s)",
                f"      {'POST start':<18}: {v.start:7.3f} s   (median of the runs: "
                f"{statistics.median(r.start for r in self.virtlab):.3f} s)",
                f"      {'to the first byte':<18}: {v.first_byte:7.3f} s   (WebSocket)",
                f"  bare qemu-system      : {b.seconds:7.3f} s   (runs: "
                f"{_runs([r.seconds for r in self.bare])})",
                f"      {'qemu-img create':<18}: {b.overlay:7.3f} s",
                f"      {'socket accepts':<18}: {b.socket:7.3f} s",
                f"      {'to the first byte':<18}: {b.first_byte:7.3f} s   (unix socket)",
                f"  ratio virtlab / bare  : {self.ratio:7.3f}   (target <= {TARGET_START}: "
                f"{'met' if self.ratio <= TARGET_START else 'NOT met'}); of the medians: "
                f"{median:.3f}",
                f"  overhead              : {1000 * (v.seconds - b.seconds):7.0f} ms   (first "
                f"bytes: {self.first[:24]!r})",
                f"  argv                  : {len(self.argv)} arguments, {' '.join(self.argv[:1])} "
                f"... -accel {self._arg('-accel')} -cpu {self._arg('-cpu')}",
            ]
        )

    def _arg(self, flag: str) -> str:
        return _arg(self.argv, flag)


async def _first_bytes(ws: Any) -> bytes:
    while True:
        data = await ws.recv()
        if data:
            return data if isinstance(data, bytes) else data.encode()


async def _virtlab_start(lab: Lab, name: str) -> tuple[VirtlabStart, dict[str, Any], bytes]:
    async with httpx.AsyncClient(base_url=lab.url, headers=lab.headers, timeout=120) as client:
        (await client.get("/api/health")).raise_for_status()  # the connection is open
        t0 = time.perf_counter()
        reply = await client.post("/api/nodes", json=_spec(name, lab.image))
        t1 = time.perf_counter()
        if reply.status_code != 201:
            raise RuntimeError(f"POST /api/nodes: {reply.status_code} {reply.text}")
        node = reply.json()
        reply = await client.post(f"/api/nodes/{node['id']}/start")
        t2 = time.perf_counter()
        if reply.status_code != 200:
            raise RuntimeError(f"POST start: {reply.status_code} {reply.text}")
        async with connect(_ws_url(lab.url, node), additional_headers=lab.headers) as ws:
            first = await asyncio.wait_for(_first_bytes(ws), 120)
        t3 = time.perf_counter()
    return VirtlabStart(t1 - t0, t2 - t1, t3 - t2), node, first


def run_virtlab_start(lab: Lab) -> tuple[VirtlabStart, list[str], Path, bytes]:
    """One timed virtlab run; returns it with the node's QEMU argv and its directory (the
    node is killed and deleted afterwards, not timed)."""
    run, node, first = asyncio.run(_virtlab_start(lab, lab.name("s")))
    try:
        pid = lab.qemu_pid(node["id"])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        argv = bare_argv(argv, lab.node_dir(node["id"]))
    finally:
        lab.dispose(node["id"])
    lab.warmed = True
    return run, argv, lab.node_dir(node["id"]), first


_PASSED = re.compile(r"^socket,id=(qmp|serial0),fd=\d+,server=on,wait=(on|off)$")


def bare_argv(argv: list[str], node_dir: Path) -> list[str]:
    """A node's argv for a bare run: QMP and the serial console on sockets QEMU binds itself
    (virtlab passes its own as descriptors, the serial with a connection queued and
    ``wait=on``; a bare QEMU has neither), and no ``-S`` (older servers started halted)."""
    out = []
    for arg in argv:
        passed = _PASSED.match(arg)
        if passed:
            name = "qmp.sock" if passed[1] == "qmp" else "serial.sock"
            arg = f"socket,id={passed[1]},path={node_dir / name},server=on,wait=off"
        if arg != "-S":
            out.append(arg)
    return out


def run_bare_start(argv: list[str], node_dir: Path, scratch: Path, base: Path) -> BareStart:
    """The node's argv, with its directory replaced by ``scratch``; see the module's doc."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    args = [arg.replace(str(node_dir), str(scratch)) for arg in argv]
    serial = scratch / "serial.sock"
    if str(serial) not in " ".join(args):
        raise RuntimeError(f"no serial socket in the node's argv: {argv}")
    log = (scratch / "qemu.log").open("wb")
    proc: subprocess.Popen | None = None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        t0 = time.perf_counter()
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
             str(scratch / "disk.qcow2")],
            check=True,
        )  # fmt: skip
        t1 = time.perf_counter()
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=scratch,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                sock.connect(str(serial))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"bare QEMU never opened its serial socket: "
                        f"{(scratch / 'qemu.log').read_text(errors='replace')[-800:]}"
                    ) from None
                time.sleep(0.001)
        t2 = time.perf_counter()
        sock.settimeout(120)
        if not sock.recv(4096):
            raise RuntimeError("bare QEMU closed its serial socket without a byte")
        t3 = time.perf_counter()
    finally:
        sock.close()
        if proc is not None:
            proc.kill()
            proc.wait(30)
        log.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return BareStart(t1 - t0, t2 - t1, t3 - t2)


def bench_start(lab: Lab, workdir: Path, runs: int) -> StartResult:
    # Warm-up, not timed: the first run brings QEMU, firmware and the server's code paths in.
    _, argv, node_dir, _ = run_virtlab_start(lab)
    base = lab.base_path(lab.image)
    scratch = workdir / "bare-node"
    run_bare_start(argv, node_dir, scratch, base)
    result = StartResult(_arg(argv, "-accel"), argv)
    for i in range(runs):
        for side in ("virtlab", "bare") if i % 2 == 0 else ("bare", "virtlab"):
            if side == "virtlab":
                run, argv, node_dir, first = run_virtlab_start(lab)
                result.virtlab.append(run)
                result.first = result.first or first
            else:
                result.bare.append(run_bare_start(argv, node_dir, scratch, base))
    result.argv = argv
    return result


def _arg(argv: list[str], flag: str) -> str:
    with contextlib.suppress(ValueError, IndexError):
        return argv[argv.index(flag) + 1]
    return "?"


# -- (2) overlay creation against the base's size -----------------------------------------------


@dataclass
class OverlayResult:
    small_size: int
    big_size: int
    virtlab_small: list[float] = field(default_factory=list)
    virtlab_big: list[float] = field(default_factory=list)
    bare_small: list[float] = field(default_factory=list)
    bare_big: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """virtlab: best over the big base / best over the small one."""
        return min(self.virtlab_big) / min(self.virtlab_small)

    @property
    def median_ratio(self) -> float:
        return statistics.median(self.virtlab_big) / statistics.median(self.virtlab_small)

    @property
    def met(self) -> bool:
        low, high = OVERLAY_NOISE
        return low <= self.ratio <= high

    def report(self) -> str:
        def line(label: str, values: list[float]) -> str:
            return (
                f"  {label:<22}: {1000 * min(values):7.1f} ms best, "
                f"{1000 * statistics.median(values):7.1f} ms median   (runs, ms: "
                f"{', '.join(f'{1000 * v:.1f}' for v in values)})"
            )

        small, big = human_bytes(self.small_size), human_bytes(self.big_size)
        bare = min(self.bare_big) / min(self.bare_small)
        low, high = OVERLAY_NOISE
        return "\n".join(
            [
                f"overlay creation: POST /api/nodes over a {small} base (its file {small}) and a "
                f"{big} base (empty, sparse); {len(self.virtlab_small)} runs each",
                line(f"virtlab, {small} base", self.virtlab_small),
                line(f"virtlab, {big} base", self.virtlab_big),
                line(f"qemu-img create, {small}", self.bare_small),
                line(f"qemu-img create, {big}", self.bare_big),
                f"  ratio {big} / {small}: {self.ratio:7.3f} virtlab (medians: "
                f"{self.median_ratio:.3f}), {bare:.3f} bare   (constant time, target "
                f"{low} to {high}: {'met' if self.met else 'NOT met'})",
                f"  virtlab / bare        : {min(self.virtlab_small) / min(self.bare_small):7.3f}"
                f" ({small}), {min(self.virtlab_big) / min(self.bare_big):.3f} ({big}): "
                "the rest of a create (checks, catalog row, ports) and HTTP",
            ]
        )


def _post_node(client: httpx.Client, lab: Lab, image: str) -> tuple[float, str]:
    start = time.perf_counter()
    reply = client.post("/api/nodes", json=_spec(lab.name("o"), image))
    seconds = time.perf_counter() - start
    if reply.status_code != 201:
        raise RuntimeError(f"POST /api/nodes: {reply.status_code} {reply.text}")
    return seconds, reply.json()["id"]


def _bare_overlay(base: Path, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(out)],
        check=True,
    )
    seconds = time.perf_counter() - start
    out.unlink()
    return seconds


def bench_overlay(lab: Lab, workdir: Path, runs: int, small: int, big: int) -> OverlayResult:
    result = OverlayResult(small, big)
    out = workdir / "bare-overlay.qcow2"
    sides = ["virtlab_small", "virtlab_big", "bare_small", "bare_big"]
    paths = {image: lab.base_path(image) for image in (lab.small_base, lab.big_base)}
    with httpx.Client(base_url=lab.url, headers=lab.headers, timeout=120) as client:
        client.get("/api/health").raise_for_status()
        for i in range(runs + 1):  # the first round warms up and is not kept
            for side in sides if i % 2 == 0 else reversed(sides):
                image = lab.small_base if side.endswith("small") else lab.big_base
                if side.startswith("virtlab"):
                    seconds, node_id = _post_node(client, lab, image)
                    client.delete(f"/api/nodes/{node_id}").raise_for_status()
                else:
                    seconds = _bare_overlay(paths[image], out)
                if i:
                    getattr(result, side).append(seconds)
    return result


# -- (3) many nodes at once ---------------------------------------------------------------------


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


class GuestFailed(RuntimeError):
    """A guest printed a kernel panic on its serial console: it will never show the marker."""


async def _until_marker(ws: Any, name: str) -> None:
    tail = b""
    while _MARKER not in tail:
        data = await ws.recv()
        tail = (tail + (data if isinstance(data, bytes) else data.encode()))[-8192:]
        panic = _PANIC.search(tail)
        if panic:
            raise GuestFailed(f"{name}: guest kernel panic: {panic[1].decode(errors='replace')}")


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


# -- all three ------------------------------------------------------------------------------------


@dataclass
class NodesResult:
    start: StartResult | None = None
    overlay: OverlayResult | None = None
    many: ManyResult | None = None

    def report(self) -> str:
        parts = [r.report() for r in (self.start, self.overlay, self.many) if r is not None]
        return "\n\n".join(parts)


def bench_nodes(
    workdir: Path,
    *,
    runs: int = 3,
    small_size: int = 64 * MiB,
    big_size: int = 40 * GiB,
    count: int = 20,
    start_runs: int | None = None,
    overlay_runs: int | None = None,
    which: tuple[str, ...] = WHICH,
    server_env: dict[str, str] | None = None,
    report: bool = False,
) -> NodesResult:
    """Run the chosen benchmarks (``start``, ``overlay``, ``many``) on one server in
    ``workdir``; ``report`` prints each one as soon as it is done.

    A start-up or an overlay takes a fraction of a second and its noise is of the same order
    as the overhead measured, so those two keep the best of ``5 x runs`` per side unless
    ``start_runs`` / ``overlay_runs`` say otherwise."""
    workdir.mkdir(parents=True, exist_ok=True)
    result = NodesResult()

    def done(part: Any) -> None:
        if report:
            print("\n" + part.report(), flush=True)

    with node_lab(workdir, small_size=small_size, big_size=big_size, env=server_env) as lab:
        if "start" in which:
            result.start = bench_start(lab, workdir, start_runs or 5 * runs)
            done(result.start)
        if "overlay" in which:
            result.overlay = bench_overlay(
                lab, workdir, overlay_runs or 5 * runs, small_size, big_size
            )
            done(result.overlay)
        if "many" in which:
            result.many = bench_many(lab, count)
            done(result.many)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runs", type=int, default=3, help="runs per side (x5 for start and overlay; best kept)"
    )
    parser.add_argument("--small-mib", type=int, default=64, help="the small base, MiB")
    parser.add_argument("--big-gib", type=int, default=40, help="the big (empty) base, GiB")
    parser.add_argument("--count", type=int, default=20, help="nodes started at once")
    parser.add_argument("--only", choices=WHICH, action="append", help="run just these")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temp dir")
    parser.add_argument("--server-src", type=Path, help="run the server from this src/ (A/B)")


def main(argv: list[str] | None = None) -> NodesResult:
    parser = argparse.ArgumentParser(prog="python -m bench.nodes", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="virtlab-bench-", dir=args.workdir) as tmp:
        return bench_nodes(
            Path(tmp),
            runs=args.runs,
            small_size=args.small_mib * MiB,
            big_size=args.big_gib * GiB,
            count=args.count,
            which=tuple(args.only or WHICH),
            server_env=server_env(args.server_src),
            report=True,
        )


if __name__ == "__main__":
    main()
