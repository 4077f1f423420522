"""Deploy (``deploy``): ``examples/ring10.yaml`` (for another ``--nodes`` count, the same ring
written out: ``n<i>:eth1 -- n<i+1>:eth0``, the last back to ``n1:eth0``; 128 MiB each, as
in the file) with the test disk as its image (``POST /api/labs`` with the YAML body and
``?image=``).
virtlab: from the ``POST`` until every node's serial WebSocket has shown
:data:`BOOT_MARKER` (the deploy makes the overlays, the links and starts the nodes, four
at a time, each once QMP answers; the WebSockets open once the reply is in: the console
hub keeps a scrollback, so no byte is lost).
bare: each node's ``qemu-system-x86_64`` argv is read from ``/proc/<pid>/cmdline`` after a
virtlab run, with QMP and the serial console on sockets QEMU binds itself (virtlab passes
its own as descriptors: ``bench.node_start.bare_argv``), its directory replaced by a scratch
one, and each node's link symlinks (``nicN.peer``) are noted; the lab is then destroyed.
One ``bash -c`` then runs a plain loop over the scratch directories: ``qemu-img create -b``
(a fresh overlay), ``ln -s`` (the cables), ``setsid qemu-system-x86_64 … &`` (each QEMU in a
session of its own, as virtlab starts them: see :data:`ONE_SESSION_MIN_NODES`); every
node's serial unix socket is polled
until it accepts and read until the marker. Both sides include overlays, cables and the
boot. The same loop without ``setsid`` runs once more as context.
Best of ``--runs`` each, the sides alternating (virtlab first, as it provides the argv).
A guest kernel panic on a console makes that run a failure at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from websockets.asyncio.client import connect

from bench.lab_server import (
    BOOT_TIMEOUT,
    RAM_MB,
    Bench,
    cpu_seconds,
    kill_qemus,
    run_list,
)
from bench.node_lab import _MARKER, _PANIC, GuestFailed, _until_marker, _ws_url
from bench.node_start import bare_argv
from bench.server import REPO

RING_FILE = REPO / "examples" / "ring10.yaml"


def ring_yaml(count: int) -> str:
    """``examples/ring10.yaml`` for 10 nodes; the same ring of ``count`` nodes otherwise."""
    if count == 10:
        return RING_FILE.read_text()
    if count < 2:
        raise ValueError("a ring has at least 2 nodes")
    nodes = "".join(f"    n{i}: {{}}\n" for i in range(1, count + 1))
    links = "".join(
        f'    - endpoints: ["n{i}:eth1", "n{i % count + 1}:eth0"]\n' for i in range(1, count + 1)
    )
    return (
        f"name: ring{count}\ntopology:\n"
        f"  defaults: {{image: boot.qcow2, ram_mb: {RAM_MB}, nics: 2, vnc: false}}\n"
        f"  nodes:\n{nodes}  links:\n{links}"
    )


def _lab_name(text: str) -> str:
    match = re.search(r"^name:\s*(\S+)", text, re.M)
    if not match:
        raise ValueError("the topology file has no name")
    return match[1]


# -- (1) deploy a ring against a shell loop -------------------------------------------------------


@dataclass
class DeployRun:
    reply: float  # POST /api/labs until its reply (bare: until bash has spawned them all)
    markers: list[float]  # per node, from t0 until its marker
    qemu_cpu: float = 0.0  # CPU seconds of all its QEMUs once the last marker is in

    @property
    def seconds(self) -> float:
        return max(self.markers)


@dataclass
class BareNode:
    """A node's QEMU as virtlab ran it: its argv, its directory, its cables."""

    name: str
    argv: list[str]
    node_dir: Path
    peers: dict[str, tuple[str, str]]  # nicN.peer -> (the peer node's name, the socket's name)


@dataclass
class DeployResult:
    count: int
    accel: str = ""
    argc: int = 0
    virtlab: list[DeployRun] = field(default_factory=list)
    bare: list[DeployRun] = field(default_factory=list)
    one_session: DeployRun | None = None  # the loop without setsid, once (context)
    failures: list[str] = field(default_factory=list)

    @property
    def best_virtlab(self) -> DeployRun:
        return min(self.virtlab, key=lambda r: r.seconds)

    @property
    def best_bare(self) -> DeployRun:
        return min(self.bare, key=lambda r: r.seconds)

    @property
    def ratio(self) -> float:
        if not self.virtlab or not self.bare:
            return float("nan")
        return self.best_virtlab.seconds / self.best_bare.seconds

    def report(self) -> str:
        n = self.count
        lines = [
            f"deploy of a {n}-node ring from YAML until every serial console shows the marker "
            f"({self.accel}, {RAM_MB} MiB each, the test disk); best of {len(self.virtlab)}"
        ]
        if self.virtlab:
            v = self.best_virtlab
            lines += [
                f"  virtlab               : {v.seconds:7.2f} s   (runs: "
                f"{run_list([r.seconds for r in self.virtlab])})",
                f"      POST /api/labs    : {v.reply:7.2f} s   (overlays, links, starts: 4 at "
                "a time, each until QMP answers)",
                f"      markers           : first {min(v.markers):.2f} s, median "
                f"{statistics.median(v.markers):.2f} s, last {max(v.markers):.2f} s",
            ]
        if self.bare:
            b = self.best_bare
            lines += [
                f"  bare shell loop       : {b.seconds:7.2f} s   (runs: "
                f"{run_list([r.seconds for r in self.bare])})",
                f"      bash loop returns : {b.reply:7.2f} s   (qemu-img create, ln -s, setsid "
                "qemu-system-x86_64 &, per node)",
                f"      markers           : first {min(b.markers):.2f} s, median "
                f"{statistics.median(b.markers):.2f} s, last {max(b.markers):.2f} s",
            ]
        if self.virtlab and self.bare:
            median = statistics.median(r.seconds for r in self.virtlab) / statistics.median(
                r.seconds for r in self.bare
            )
            lines += [
                f"  QEMU CPU, all nodes   : {self.best_virtlab.qemu_cpu:7.1f} s virtlab, "
                f"{self.best_bare.qemu_cpu:.1f} s bare (in the best runs, once the last marker "
                "was in)",
                f"  ratio virtlab / bare  : {self.ratio:7.3f}   (no target set: reported); of "
                f"the medians: {median:.3f}; overhead "
                f"{self.best_virtlab.seconds - self.best_bare.seconds:+.2f} s",
            ]
        if self.one_session is not None:
            o = self.one_session
            lines.append(
                f"  context: no setsid    : {o.seconds:7.2f} s, QEMU CPU {o.qemu_cpu:.1f} s   "
                "(the same loop, all QEMUs in its one session: one scheduler autogroup; once)"
            )
        lines.append(
            f"  all {n} reach the marker: {'yes' if not self.failures else 'NO'}"
            + (f"   ({'; '.join(self.failures[:3])})" if self.failures else "")
        )
        if self.argc:
            lines.append(f"  argv                  : {self.argc} arguments per node, -accel "
                         f"{self.accel}")  # fmt: skip
        return "\n".join(lines)


async def _virtlab_deploy(bench: Bench, text: str) -> tuple[DeployRun, list[dict[str, Any]]]:
    name = _lab_name(text)
    limits = httpx.Limits(max_connections=8)
    async with httpx.AsyncClient(
        base_url=bench.url, headers=bench.headers, timeout=BOOT_TIMEOUT, limits=limits
    ) as api:
        (await api.get("/api/health")).raise_for_status()  # the connection is open
        t0 = time.perf_counter()
        reply = await api.post(
            "/api/labs", content=text.encode(), params={"image": bench.image},
            headers={"content-type": "application/yaml"},
        )  # fmt: skip
        t1 = time.perf_counter()
        if reply.status_code != 201:
            raise RuntimeError(f"POST /api/labs: {reply.status_code} {reply.text}")
        lab = (await api.get(f"/api/labs/{name}")).json()
        nodes = lab["node_list"]

        async def marker(node: dict[str, Any]) -> float:
            async with connect(
                _ws_url(bench.url, node), additional_headers=bench.headers, max_queue=None
            ) as ws:
                await _until_marker(ws, node["name"])
            return time.perf_counter() - t0

        markers = await asyncio.wait_for(asyncio.gather(*(marker(n) for n in nodes)), BOOT_TIMEOUT)
    cpu = cpu_seconds([bench.qemu_pid(n["id"]) for n in nodes])
    return DeployRun(t1 - t0, list(markers), cpu), nodes


def _as_ran(bench: Bench, nodes: list[dict[str, Any]]) -> list[BareNode]:
    """Each node's argv (from /proc) and cables (its ``nicN.peer`` symlinks)."""
    by_dir = {bench.node_dir(n["id"]): n["name"] for n in nodes}
    out = []
    for node in nodes:
        node_dir = bench.node_dir(node["id"])
        pid = bench.qemu_pid(node["id"])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        # QMP and the serial console on sockets QEMU binds itself: virtlab passes its own.
        argv = bare_argv(argv, node_dir)
        peers = {}
        for peer in sorted(node_dir.glob("nic*.peer")):
            target = Path(os.readlink(peer))
            peers[peer.name] = (by_dir[target.parent], target.name)
        out.append(BareNode(node["name"], argv, node_dir, peers))
    return out


def _destroy(bench: Bench, name: str, nodes: list[dict[str, Any]]) -> None:
    """Destroy the lab (not timed); then make sure its QEMUs are gone."""
    pids = []
    for node in nodes:
        with contextlib.suppress(OSError, ValueError):
            pids.append(bench.qemu_pid(node["id"]))
    with httpx.Client(base_url=bench.url, headers=bench.headers, timeout=600) as client:
        reply = client.delete(f"/api/labs/{name}")
        if reply.status_code not in (204, 404):
            raise RuntimeError(f"DELETE /api/labs/{name}: {reply.status_code} {reply.text}")
    kill_qemus(pids)


# The bare side: one bash, a plain loop. Each scratch directory holds the node's argv as
# /proc/<pid>/cmdline had it (NUL-separated, the directory replaced) and its cables. $run is
# `setsid` (each QEMU in a session of its own, as virtlab starts them) or empty (all of them in
# the loop's session: see ONE_SESSION).
_LOOP = r"""
base=$1; run=$2; shift 2
for d in "$@"; do
  qemu-img create -q -f qcow2 -b "$base" -F qcow2 "$d/disk.qcow2" || exit 1
  while IFS=$'\t' read -r name target; do ln -s "$target" "$d/$name"; done < "$d/cables"
  mapfile -d '' -t argv < "$d/cmdline"
  $run "${argv[@]}" </dev/null >"$d/qemu.log" 2>&1 &
  echo $!
done
"""
# With the kernel's scheduler autogroups (kernel.sched_autogroup_enabled=1, the default), CPU
# time is shared fairly between sessions first. QEMUs that all sit in the loop's one session
# boot a 10-node ring here in 1.1 to 1.7 times the time and CPU seconds that the same QEMUs
# take each in a session of its own (virtlab's way: posix_spawn with setsid). The ratio is
# taken against the loop with `setsid`, so it measures virtlab and not the scheduler; the
# loop without it is run once as context.
ONE_SESSION_MIN_NODES = 4  # below this the difference is within noise: not run


async def _serial_marker(path: Path, pid: int, name: str, t0: float) -> float:
    while True:
        try:
            reader, writer = await asyncio.open_unix_connection(str(path))
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if not psutil.pid_exists(pid):
                log = path.with_name("qemu.log")
                raise RuntimeError(
                    f"bare {name}: QEMU ended before its serial socket opened: "
                    f"{log.read_text(errors='replace')[-600:] if log.exists() else ''}"
                ) from None
            await asyncio.sleep(0.002)
    try:
        tail = b""
        while _MARKER not in tail:
            data = await reader.read(65536)
            if not data:
                raise RuntimeError(f"bare {name}: the serial socket closed before the marker")
            tail = (tail + data)[-8192:]
            panic = _PANIC.search(tail)
            if panic:
                raise GuestFailed(f"bare {name}: guest kernel panic: {panic[1].decode()}")
        return time.perf_counter() - t0
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def run_bare_ring(
    nodes: list[BareNode], scratch: Path, base: Path, *, own_sessions: bool = True
) -> DeployRun:
    """The nodes' argv from one ``bash -c`` loop over fresh scratch directories; each QEMU
    in a session of its own (``setsid``) unless ``own_sessions`` is false."""
    shutil.rmtree(scratch, ignore_errors=True)
    dirs = {n.name: scratch / n.name for n in nodes}
    for node in nodes:
        d = dirs[node.name]
        d.mkdir(parents=True)
        args = [arg.replace(str(node.node_dir), str(d)) for arg in node.argv]
        if str(d / "serial.sock") not in " ".join(args):
            raise RuntimeError(f"no serial socket in {node.name}'s argv: {node.argv}")
        (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in args))
        (d / "cables").write_text(
            "".join(f"{peer}\t{dirs[other] / sock}\n" for peer, (other, sock) in node.peers.items())
        )
    pids: list[int] = []
    try:
        t0 = time.perf_counter()
        done = subprocess.run(
            ["bash", "-c", _LOOP, "bash", str(base), "setsid" if own_sessions else "",
             *(str(dirs[n.name]) for n in nodes)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, start_new_session=True,
            check=False,
        )  # fmt: skip
        t1 = time.perf_counter()
        pids = [int(p) for p in done.stdout.split()]
        if done.returncode != 0 or len(pids) != len(nodes):
            raise RuntimeError(f"the bash loop failed ({done.returncode}): {done.stderr[-600:]}")

        async def markers() -> list[float]:
            return await asyncio.wait_for(
                asyncio.gather(*(
                    _serial_marker(dirs[n.name] / "serial.sock", pid, n.name, t0)
                    for n, pid in zip(nodes, pids, strict=True)
                )),
                BOOT_TIMEOUT,
            )  # fmt: skip

        times = asyncio.run(markers())
        return DeployRun(t1 - t0, times, cpu_seconds(pids))
    finally:
        for d in dirs.values():  # also those the loop started before it failed
            with contextlib.suppress(OSError, ValueError):
                pids.append(int((d / "qemu.pid").read_text()))
        kill_qemus(sorted(set(pids)))
        shutil.rmtree(scratch, ignore_errors=True)


def bench_deploy(bench: Bench, workdir: Path, *, count: int, runs: int) -> DeployResult:
    text = ring_yaml(count)
    name = _lab_name(text)
    result = DeployResult(count)
    scratch = workdir / "bare"
    ran: list[BareNode] = []
    for i in range(runs):
        for side in ("virtlab", "bare") if i % 2 == 0 else ("bare", "virtlab"):
            if side == "virtlab":
                nodes: list[dict[str, Any]] = []
                try:
                    run, nodes = asyncio.run(_virtlab_deploy(bench, text))
                    ran = _as_ran(bench, nodes)
                    result.virtlab.append(run)
                except (GuestFailed, TimeoutError, RuntimeError) as exc:
                    result.failures.append(f"virtlab: {str(exc)[:200] or type(exc).__name__}")
                finally:
                    if not nodes:
                        nodes = _lab_nodes(bench, name)
                    _destroy(bench, name, nodes)
            elif ran:
                try:
                    result.bare.append(run_bare_ring(ran, scratch, bench.base))
                except (GuestFailed, TimeoutError, RuntimeError) as exc:
                    result.failures.append(f"bare: {str(exc)[:200] or type(exc).__name__}")
    if ran and count >= ONE_SESSION_MIN_NODES:
        try:
            result.one_session = run_bare_ring(ran, scratch, bench.base, own_sessions=False)
        except (GuestFailed, TimeoutError, RuntimeError) as exc:
            result.failures.append(f"bare, one session: {str(exc)[:200] or type(exc).__name__}")
    if ran:
        result.accel = _arg(ran[0].argv, "-accel")
        result.argc = len(ran[0].argv)
    return result


def _lab_nodes(bench: Bench, name: str) -> list[dict[str, Any]]:
    with httpx.Client(base_url=bench.url, headers=bench.headers, timeout=60) as client:
        reply = client.get(f"/api/labs/{name}")
    return reply.json()["node_list"] if reply.status_code == 200 else []


def _arg(argv: list[str], flag: str) -> str:
    with contextlib.suppress(ValueError, IndexError):
        return argv[argv.index(flag) + 1]
    return "?"
