"""Node start-up: create + start until the first serial byte, against the same QEMU run bare.

Benchmark (1) of ``python -m bench.nodes``; its doc says how each side runs."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

from bench.node_lab import RAM_MB, Lab, _spec, _ws_url

__all__ = ["BareStart", "StartResult", "VirtlabStart", "bare_argv", "bench_start"]

TARGET_START = 1.10


def _runs(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


@dataclass
class VirtlabStart:
    request: float  # POST /api/nodes with start (and POST .../start for an older server)
    first_byte: float  # the reply .. the first byte on the WebSocket
    requests: int = 1

    @property
    def seconds(self) -> float:
        return self.request + self.first_byte


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
                f"      {self._requests():<18}: {v.request:7.3f} s   (median of the runs: "
                f"{statistics.median(r.request for r in self.virtlab):.3f} s)",
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

    def _requests(self) -> str:
        return "POST /api/nodes" if self.best_virtlab.requests == 1 else "create, then start"


async def _first_bytes(ws: Any) -> bytes:
    while True:
        data = await ws.recv()
        if data:
            return data if isinstance(data, bytes) else data.encode()


async def _virtlab_start(lab: Lab, name: str) -> tuple[VirtlabStart, dict[str, Any], bytes]:
    async with httpx.AsyncClient(base_url=lab.url, headers=lab.headers, timeout=120) as client:
        (await client.get("/api/health")).raise_for_status()  # the connection is open
        t0 = time.perf_counter()
        reply = await client.post("/api/nodes", json=_spec(name, lab.image) | {"start": True})
        if reply.status_code != 201:
            raise RuntimeError(f"POST /api/nodes: {reply.status_code} {reply.text}")
        node, requests = reply.json(), 1
        if node["state"] == "stopped":  # a server from before `start` (--server-src): start it
            reply, requests = await client.post(f"/api/nodes/{node['id']}/start"), 2
            if reply.status_code != 200:
                raise RuntimeError(f"POST start: {reply.status_code} {reply.text}")
        t1 = time.perf_counter()
        async with connect(_ws_url(lab.url, node), additional_headers=lab.headers) as ws:
            first = await asyncio.wait_for(_first_bytes(ws), 120)
        t2 = time.perf_counter()
    return VirtlabStart(t1 - t0, t2 - t1, requests), node, first


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
    """The node's argv, with its directory replaced by ``scratch``; see ``bench.nodes``' doc."""
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
