"""Labs and links: a ring deployed from YAML against the same QEMUs from a shell loop, and the
throughput of a plain link against a captured one.

One server serves both. The tiny bootable test disk (``virtlab.devtools.bootdisk``) is imported
with ``PUT`` and every guest boots it under the accelerator the server picked (TCG here).

(1) Deploy (``deploy``): ``examples/ring10.yaml`` (for another ``--nodes`` count, the same ring
    written out: ``n<i>:eth1 -- n<i+1>:eth0``, the last back to ``n1:eth0``; 128 MiB each, as
    in the file) with the test disk as its image (``POST /api/labs`` with the YAML body and
    ``?image=``).
    virtlab: from the ``POST`` until every node's serial WebSocket has shown
    :data:`BOOT_MARKER` (the deploy makes the overlays, the links and starts the nodes, four
    at a time, each once QMP answers; the WebSockets open once the reply is in: the console
    hub keeps a scrollback, so no byte is lost).
    bare: each node's ``qemu-system-x86_64`` argv is read from ``/proc/<pid>/cmdline`` after a
    virtlab run, less ``-S`` (virtlab starts a node halted and sends ``cont`` once its console
    hub listens), with its directory replaced by a scratch one, and each node's link symlinks
    (``nicN.peer``) are noted; the lab is then destroyed. One ``bash -c`` then runs a plain
    loop over the scratch directories: ``qemu-img create -b`` (a fresh overlay), ``ln -s`` (the
    cables), ``setsid qemu-system-x86_64 … &`` (each QEMU in a session of its own, as virtlab
    starts them: see :data:`ONE_SESSION_MIN_NODES`); every node's serial unix socket is polled
    until it accepts and read until the marker. Both sides include overlays, cables and the
    boot. The same loop without ``setsid`` runs once more as context.
    Best of ``--runs`` each, the sides alternating (virtlab first, as it provides the argv).
    A guest kernel panic on a console makes that run a failure at once.
(2) Link throughput (``throughput``): two nodes (128 MiB) joined ``tp1:eth0 -- tp2:eth0``,
    10.0.0.1/24 and 10.0.0.2/24 typed on their serial consoles. busybox is all the guest has:
    ``nc -l -p 5001 > /dev/null`` on tp2, then on tp1
    ``time sh -c 'dd if=/dev/zero bs=1M count=N | nc 10.0.0.2 5001'``, which returns once tp2
    has read everything and closed. Timed by the guest (busybox ``time``, 10 ms resolution)
    and, as context, by the host around the console command; tp2's ``rx_bytes`` must have
    grown by at least N MiB. "plain" is the direct link (kernel to kernel, no relay);
    "captured" runs between ``POST /api/links/{id}/capture/start`` and ``…/stop`` (the relay
    joins the link and writes every frame to a pcap file). Best of ``--runs``, alternating.
(3) Relay capacity (``blast``; host only, no guest, not through the server): what the relay
    itself forwards. Two small Python processes stand in for two QEMUs, each binding a
    ``nic0.sock`` like QEMU; the sender ``sendto()``s ``--blast-frames`` frames of 1514 bytes
    (a full Ethernet frame; a ``dgram`` netdev carries no larger ones) to its ``nic0.peer``
    symlink, as QEMU does, with blocking sends (the kernel's flow control, so nothing is
    lost); the sink counts them. Wired direct (kernel to kernel), through a
    :class:`virtlab.links.Relay` running on an asyncio loop in this process, and through the
    relay while it captures to a pcap file. Frames and MB/s from the first send to the last
    frame received.

Every QEMU of the server's data directory and of the bare runs is killed by its pid at the end,
whatever happened.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil
from websockets.asyncio.client import connect

from bench.common import REPO, MiB, running_server, server_env
from bench.nodes import _MARKER, _PANIC, GuestFailed, _until_marker, _ws_url
from virtlab.devtools.bootdisk import build_boot_disk

if TYPE_CHECKING:
    from support.server import Server

__all__ = [
    "BlastResult",
    "DeployResult",
    "LabsResult",
    "ThroughputResult",
    "bench_blast",
    "bench_deploy",
    "bench_labs",
    "bench_throughput",
    "main",
    "ring_yaml",
]

WHICH = ("deploy", "throughput", "blast")
RING_FILE = REPO / "examples" / "ring10.yaml"
RAM_MB = 128  # ring10.yaml's, and the throughput guests'
PORT = 5001
FRAME = 1514  # a full Ethernet frame without FCS
BOOT_TIMEOUT = 900.0


def _runs(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def _support() -> None:
    """tests/ on the path: the tests' helpers (server, serial shell) are the bench's too."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)


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


# -- the server and its boot image ----------------------------------------------------------------


@dataclass
class Bench:
    server: Server
    image: str  # the boot disk, imported
    base: Path  # its file in DATA/images

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def data(self) -> Path:
        return self.server.data_dir

    def node_dir(self, node_id: str) -> Path:
        return self.data / "nodes" / node_id

    def qemu_pid(self, node_id: str) -> int:
        return int((self.node_dir(node_id) / "qemu.pid").read_text())


@contextlib.contextmanager
def lab_server(workdir: Path, env: dict[str, str] | None = None) -> Iterator[Bench]:
    """The server with the boot disk imported; every node's QEMU is killed at the end."""
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    disk = build_boot_disk(workdir / "boot.img")
    with running_server(data, env) as server:
        try:
            with httpx.Client(base_url=server.url, timeout=300) as client:
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
                f"{_runs([r.seconds for r in self.virtlab])})",
                f"      POST /api/labs    : {v.reply:7.2f} s   (overlays, links, starts: 4 at "
                "a time, each until QMP answers)",
                f"      markers           : first {min(v.markers):.2f} s, median "
                f"{statistics.median(v.markers):.2f} s, last {max(v.markers):.2f} s",
            ]
        if self.bare:
            b = self.best_bare
            lines += [
                f"  bare shell loop       : {b.seconds:7.2f} s   (runs: "
                f"{_runs([r.seconds for r in self.bare])})",
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
    async with httpx.AsyncClient(base_url=bench.url, timeout=BOOT_TIMEOUT, limits=limits) as api:
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
            async with connect(_ws_url(bench.url, node), max_queue=None) as ws:
                await _until_marker(ws, node["name"])
            return time.perf_counter() - t0

        markers = await asyncio.wait_for(asyncio.gather(*(marker(n) for n in nodes)), BOOT_TIMEOUT)
    cpu = _cpu([bench.qemu_pid(n["id"]) for n in nodes])
    return DeployRun(t1 - t0, list(markers), cpu), nodes


def _as_ran(bench: Bench, nodes: list[dict[str, Any]]) -> list[BareNode]:
    """Each node's argv (from /proc) and cables (its ``nicN.peer`` symlinks)."""
    by_dir = {bench.node_dir(n["id"]): n["name"] for n in nodes}
    out = []
    for node in nodes:
        node_dir = bench.node_dir(node["id"])
        pid = bench.qemu_pid(node["id"])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        # virtlab starts nodes halted (-S) and lets them run once the console hub listens and
        # the links are set; a shell loop has nobody to say `cont`, so it runs from the start.
        argv = [a for a in argv if a != "-S"]
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
    with httpx.Client(base_url=bench.url, timeout=600) as client:
        reply = client.delete(f"/api/labs/{name}")
        if reply.status_code not in (204, 404):
            raise RuntimeError(f"DELETE /api/labs/{name}: {reply.status_code} {reply.text}")
    _kill_pids(pids)


def _kill_pids(pids: list[int]) -> None:
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if "qemu" in proc.name():
                proc.send_signal(signal.SIGKILL)
                procs.append(proc)
    psutil.wait_procs(procs, timeout=30)


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
        return DeployRun(t1 - t0, times, _cpu(pids))
    finally:
        for d in dirs.values():  # also those the loop started before it failed
            with contextlib.suppress(OSError, ValueError):
                pids.append(int((d / "qemu.pid").read_text()))
        _kill_pids(sorted(set(pids)))
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
    with httpx.Client(base_url=bench.url, timeout=60) as client:
        reply = client.get(f"/api/labs/{name}")
    return reply.json()["node_list"] if reply.status_code == 200 else []


def _arg(argv: list[str], flag: str) -> str:
    with contextlib.suppress(ValueError, IndexError):
        return argv[argv.index(flag) + 1]
    return "?"


# -- (2) throughput through a plain and a captured link -------------------------------------------


@dataclass
class Transfer:
    guest: float  # busybox time's "real"
    host: float  # around the console command (typing and echo included)
    received: int  # growth of tp2's eth0 rx_bytes
    retransmits: int  # TCP segments tp1 sent again (/proc/net/snmp RetransSegs)
    qemu_cpu: float  # CPU seconds of both QEMUs during the transfer (host side)
    server_cpu: float  # CPU seconds of the server (where the relay runs) during it


@dataclass
class ThroughputResult:
    size: int
    plain: list[Transfer] = field(default_factory=list)
    captured: list[Transfer] = field(default_factory=list)
    pcap_bytes: list[int] = field(default_factory=list)  # of each captured run
    relayed: dict[str, bool] = field(default_factory=dict)  # during / after a capture

    def mbps(self, side: str) -> float:
        runs = getattr(self, side)
        return self.size / min(r.guest for r in runs) / 1e6 if runs else float("nan")

    @property
    def ratio(self) -> float:
        return self.mbps("captured") / self.mbps("plain")

    def report(self) -> str:
        mib = self.size // MiB

        def line(label: str, side: str) -> str:
            runs = getattr(self, side)
            return (
                f"  {label:<22}: {self.mbps(side):7.2f} MB/s   (best of {len(runs)}; guest "
                f"seconds: {_runs([r.guest for r in runs])}; host: "
                f"{_runs([r.host for r in runs])})\n"
                f"      {'per run':<18}: TCP retransmits "
                f"{', '.join(str(r.retransmits) for r in runs)}; CPU s of the two QEMUs "
                f"{_runs([r.qemu_cpu for r in runs])}; of the server (the relay) "
                f"{_runs([r.server_cpu for r in runs])}"
            )

        return "\n".join([
            f"TCP throughput between two guests ({RAM_MB} MiB, the test disk): dd {mib} MiB | "
            "busybox nc, timed by busybox time in the sender",
            line("plain (direct) link", "plain"),
            line("captured link (relay)", "captured"),
            f"  ratio captured / plain: {self.ratio:7.3f}   (the relay must not be the "
            "bottleneck: see the relay's own capacity below)",
            f"  checks                : the receiver's rx_bytes grew by >= {mib} MiB every run; "
            f"relayed while captured: {self.relayed.get('during')}, after the stop: "
            f"{self.relayed.get('after')}; pcap per captured run: "
            f"{', '.join(f'{b / 1e6:.1f} MB' for b in self.pcap_bytes)}",
        ])  # fmt: skip


_REAL = re.compile(r"real\s+(\d+)m\s*([\d.]+)s")


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


# RetransSegs, found by its name in /proc/net/snmp's header line
_RETRANS = (
    'awk \'/^Tcp:/ { if (!c) { for (i = 1; i <= NF; i++) if ($i == "RetransSegs") c = i }'
    " else print $c }' /proc/net/snmp"
)


async def _transfer(
    sender: Any, receiver: Any, size: int, qemus: list[int], server: int
) -> Transfer:
    mib = size // MiB
    rx = "cat /sys/class/net/eth0/statistics/rx_bytes"
    code, before = await receiver.run(rx)
    code, retrans = await sender.run(_RETRANS)
    # The listener's stdin must never end: busybox nc half-closes the connection when it
    # does, and the sender would stop at once. A sleep feeds it nothing, for long enough.
    listen = (
        f"(sleep 3600 | nc -l -p {PORT} >/dev/null &); i=0; "
        f"while ! netstat -ltn | grep -q ':{PORT} '; do usleep 20000; i=$((i+1)); "
        f"[ $i -gt 500 ] && break; done; netstat -ltn | grep -q ':{PORT} '"
    )
    code, out = await receiver.run(listen)
    if code != 0:
        raise RuntimeError(f"the receiver does not listen: {out}")
    cpu = _cpu(qemus), _cpu([server])
    t0 = time.perf_counter()
    code, out = await sender.run(
        f"time sh -c 'dd if=/dev/zero bs=1M count={mib} 2>/dev/null | nc 10.0.0.2 {PORT}'",
        timeout=max(600, mib * 10),
    )
    host = time.perf_counter() - t0
    cpu = _cpu(qemus) - cpu[0], _cpu([server]) - cpu[1]
    real = _REAL.search(out)
    if code != 0 or real is None:
        raise RuntimeError(f"the transfer failed ({code}): {out[-400:]}")
    _, after = await receiver.run(f"{rx}; kill $(pidof sleep) 2>/dev/null; true")
    grown = _number(after) - _number(before)
    if grown < size:
        raise RuntimeError(f"the receiver got {grown} bytes, not {size}")
    _, retrans_after = await sender.run(_RETRANS)
    return Transfer(
        int(real[1]) * 60 + float(real[2]), host, grown,
        _number(retrans_after) - _number(retrans), *cpu,
    )  # fmt: skip


def _number(output: str) -> int:
    """The last line of a console command's output that is a number alone."""
    numbers = re.findall(r"^\s*(\d+)\s*$", output, re.M)
    if not numbers:
        raise RuntimeError(f"no number in {output!r}")
    return int(numbers[-1])


async def _throughput(bench: Bench, size: int, runs: int) -> ThroughputResult:
    _support()
    from support.console import SerialShell

    result = ThroughputResult(size)
    api = httpx.AsyncClient(base_url=bench.url, timeout=300)
    shells: list[Any] = []
    nodes: list[dict[str, Any]] = []
    try:
        for name in ("tp1", "tp2"):
            body = {"name": name, "image": bench.image, "ram_mb": RAM_MB, "nics": 1, "vnc": False}
            reply = await api.post("/api/nodes", json=body)
            if reply.status_code != 201:
                raise RuntimeError(f"POST /api/nodes: {reply.status_code} {reply.text}")
            nodes.append(reply.json())
        for node in nodes:
            (await api.post(f"/api/nodes/{node['id']}/start")).raise_for_status()
        made = await api.post("/api/links", json={"a": "tp1:eth0", "b": "tp2:eth0"})
        if made.status_code != 201:
            raise RuntimeError(f"POST /api/links: {made.status_code} {made.text}")
        link = made.json()["id"]
        for node, address in zip(nodes, ("10.0.0.1/24", "10.0.0.2/24"), strict=True):
            shell = await SerialShell.open(bench.url, node)
            shells.append(shell)
            code, out = await shell.run(f"ip addr add {address} dev eth0 && ip link set eth0 up")
            if code != 0:
                raise RuntimeError(f"{node['name']}: {out}")
        sender = shells[0]
        qemus = [bench.qemu_pid(node["id"]) for node in nodes]
        server = bench.server.proc.pid  # type: ignore[union-attr]
        for _ in range(5):  # the carrier and ARP settle
            if (await sender.run("ping -c 1 -W 2 10.0.0.2", timeout=60))[0] == 0:
                break
        else:
            raise RuntimeError("tp1 cannot ping tp2 over the link")
        for i in range(runs):
            for side in ("plain", "captured") if i % 2 == 0 else ("captured", "plain"):
                if side == "plain":
                    result.plain.append(await _transfer(*shells, size, qemus, server))
                    continue
                started = await api.post(f"/api/links/{link}/capture/start")
                started.raise_for_status()
                result.relayed["during"] = started.json()["relayed"]
                try:
                    result.captured.append(await _transfer(*shells, size, qemus, server))
                finally:
                    stopped = await api.post(f"/api/links/{link}/capture/stop")
                    result.relayed["after"] = stopped.json()["relayed"]
                pcaps = sorted((bench.data / "captures" / link).glob("*.pcap"))
                if pcaps:
                    result.pcap_bytes.append(pcaps[-1].stat().st_size)
                for pcap in pcaps:
                    pcap.unlink()
    finally:
        for shell in shells:
            with contextlib.suppress(Exception):
                await shell.close()
        for node in nodes:
            with contextlib.suppress(httpx.HTTPError):
                await api.post(f"/api/nodes/{node['id']}/kill")
                await api.delete(f"/api/nodes/{node['id']}")
        await api.aclose()
        for node in nodes:
            with contextlib.suppress(OSError, ValueError):
                _kill_pids([bench.qemu_pid(node["id"])])
    return result


def bench_throughput(bench: Bench, *, size: int, runs: int) -> ThroughputResult:
    return asyncio.run(_throughput(bench, size, runs))


# -- (3) the relay's own capacity: a host-side blast ----------------------------------------------

# Stand-ins for two QEMUs: each binds its nic0.sock; the sender sends to its nic0.peer.
_SINK = r"""
import json, socket, sys, time
path, frames = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
print("ready", flush=True)
s.settimeout(5)
buf = bytearray(70000)
got = size = 0
last = None
try:
    while got < frames:
        size += s.recv_into(buf)
        got += 1
        last = time.monotonic()
except TimeoutError:
    pass
print(json.dumps({"frames": got, "bytes": size, "last": last}), flush=True)
"""
_SEND = r"""
import os, socket, sys, time
own, peer, frames, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(own)
frame = bytes.fromhex("5254000000025254000000010800") + os.urandom(size - 14)
t0 = time.monotonic()
for _ in range(frames):
    s.sendto(frame, peer)
print(t0, flush=True)
"""


@dataclass
class BlastResult:
    frames: int
    seconds: dict[str, float] = field(default_factory=dict)  # case -> best seconds
    received: dict[str, int] = field(default_factory=dict)  # case -> frames received (worst)

    def mbps(self, case: str) -> float:
        return self.frames * FRAME / self.seconds[case] / 1e6

    def report(self) -> str:
        lines = [
            f"relay capacity, host only: {self.frames:,} frames of {FRAME} bytes from one "
            "process to another over unix datagram sockets (as two QEMUs), best run"
        ]
        for case, seconds in self.seconds.items():
            lost = self.frames - self.received[case]
            lines.append(
                f"  {case:<22}: {self.mbps(case):7.1f} MB/s   ({self.frames / seconds:,.0f} "
                f"frames/s, {seconds:.2f} s{f'; {lost} frames lost' if lost else ''})"
            )
        if "direct" in self.seconds and "relay" in self.seconds:
            lines.append(
                f"  relay / direct        : {self.mbps('relay') / self.mbps('direct'):7.3f}"
                + (f"; relay + capture / direct: "
                   f"{self.mbps('relay + capture') / self.mbps('direct'):.3f}"
                   if "relay + capture" in self.seconds else "")
            )  # fmt: skip
        return "\n".join(lines)


async def _blast_once(workdir: Path, case: str, frames: int) -> tuple[float, int]:
    from virtlab.links import Endpoint, Relay, connect_direct, connect_via

    shutil.rmtree(workdir, ignore_errors=True)
    a, b = Endpoint(workdir / "a", 0), Endpoint(workdir / "b", 0)
    a.node_dir.mkdir(parents=True)
    b.node_dir.mkdir(parents=True)
    relay = Relay(workdir / "link", a, b) if case != "direct" else None
    python = sys.executable
    sink = subprocess.Popen(
        [python, "-c", _SINK, str(b.sock), str(frames)], stdout=subprocess.PIPE, text=True
    )
    sender: subprocess.Popen[str] | None = None
    loop = asyncio.get_running_loop()
    try:
        assert sink.stdout is not None
        if (await loop.run_in_executor(None, sink.stdout.readline)).strip() != "ready":
            raise RuntimeError("the blast's sink did not start")
        if relay is None:
            connect_direct(a, b)
        else:
            await relay.start()
            connect_via(a, relay.a_sock, b, relay.b_sock)
            if case == "relay + capture":
                relay.start_capture(workdir / "capture.pcap")
        sender = subprocess.Popen(
            [python, "-c", _SEND, str(a.sock), str(a.peer), str(frames), str(FRAME)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        out, _ = await loop.run_in_executor(None, sink.communicate)
        sent, _ = await loop.run_in_executor(None, sender.communicate)
        done = json.loads(out.strip().splitlines()[-1])
        if not done["last"]:
            raise RuntimeError(f"{case}: no frame arrived")
        return done["last"] - float(sent.strip()), done["frames"]
    finally:
        for proc in (sender, sink):
            if proc is not None and proc.poll() is None:
                proc.kill()
            if proc is not None:
                proc.wait(30)
                if proc.stdout is not None:
                    proc.stdout.close()
        if relay is not None:
            await relay.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def bench_blast(workdir: Path, *, frames: int, runs: int) -> BlastResult:
    result = BlastResult(frames)
    cases = ["direct", "relay", "relay + capture"]
    for i in range(runs):
        for case in cases if i % 2 == 0 else reversed(cases):
            seconds, got = asyncio.run(_blast_once(workdir / "blast", case, frames))
            result.seconds[case] = min(seconds, result.seconds.get(case, float("inf")))
            result.received[case] = min(got, result.received.get(case, frames))
    result.seconds = {case: result.seconds[case] for case in cases}
    return result


# -- all three ------------------------------------------------------------------------------------


@dataclass
class LabsResult:
    deploy: DeployResult | None = None
    throughput: ThroughputResult | None = None
    blast: BlastResult | None = None

    def report(self) -> str:
        parts = [r.report() for r in (self.deploy, self.throughput, self.blast) if r is not None]
        return "\n\n".join(parts)


def bench_labs(
    workdir: Path,
    *,
    count: int = 10,
    runs: int = 3,
    size: int = 64 * MiB,
    blast_frames: int = 200_000,
    which: tuple[str, ...] = WHICH,
    server_env: dict[str, str] | None = None,
    report: bool = False,
) -> LabsResult:
    """Run the chosen benchmarks (``deploy``, ``throughput``, ``blast``) in ``workdir``, on one
    server; ``report`` prints each one as soon as it is done."""
    workdir.mkdir(parents=True, exist_ok=True)
    result = LabsResult()

    def done(part: Any) -> None:
        if report:
            print("\n" + part.report(), flush=True)

    if "deploy" in which or "throughput" in which:
        with lab_server(workdir, server_env) as bench:
            if "deploy" in which:
                result.deploy = bench_deploy(bench, workdir, count=count, runs=runs)
                done(result.deploy)
            if "throughput" in which:
                result.throughput = bench_throughput(bench, size=size, runs=runs)
                done(result.throughput)
    if "blast" in which:
        result.blast = bench_blast(workdir, frames=blast_frames, runs=runs)
        done(result.blast)
    return result


def main(argv: list[str] | None = None) -> LabsResult:
    parser = argparse.ArgumentParser(prog="python -m bench.labs", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs per side (best kept)")
    parser.add_argument("--nodes", type=int, default=10, help="nodes in the ring")
    parser.add_argument("--mib", type=int, default=64, help="MiB per guest transfer")
    parser.add_argument("--blast-frames", type=int, default=200_000, help="frames per blast")
    parser.add_argument("--only", choices=WHICH, action="append", help="run just these")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temp dir")
    parser.add_argument("--server-src", type=Path, help="run the server from this src/ (A/B)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="virtlab-bench-", dir=args.workdir) as tmp:
        return bench_labs(
            Path(tmp),
            count=args.nodes,
            runs=args.runs,
            size=args.mib * MiB,
            blast_frames=args.blast_frames,
            which=tuple(args.only or WHICH),
            server_env=server_env(args.server_src),
            report=True,
        )


if __name__ == "__main__":
    main()
