"""Link throughput (``throughput``): two nodes (128 MiB) joined ``tp1:eth0 -- tp2:eth0``,
10.0.0.1/24 and 10.0.0.2/24 typed on their serial consoles. busybox is all the guest has:
``nc -l -p 5001 > /dev/null`` on tp2, then on tp1
``time sh -c 'dd if=/dev/zero bs=1M count=N | nc 10.0.0.2 5001'``, which returns once tp2
has read everything and closed. Timed by the guest (busybox ``time``, 10 ms resolution)
and, as context, by the host around the console command; tp2's ``rx_bytes`` must have
grown by at least N MiB. "plain" is the direct link (kernel to kernel, no relay);
"captured" runs between ``POST /api/links/{id}/capture/start`` and ``…/stop`` (the relay
joins the link and writes every frame to a pcap file). Best of ``--runs``, alternating.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.files import MiB
from bench.lab_server import (
    RAM_MB,
    Bench,
    cpu_seconds,
    kill_qemus,
    run_list,
    tests_on_path,
)

PORT = 5001


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
                f"seconds: {run_list([r.guest for r in runs])}; host: "
                f"{run_list([r.host for r in runs])})\n"
                f"      {'per run':<18}: TCP retransmits "
                f"{', '.join(str(r.retransmits) for r in runs)}; CPU s of the two QEMUs "
                f"{run_list([r.qemu_cpu for r in runs])}; of the server (the relay) "
                f"{run_list([r.server_cpu for r in runs])}"
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
    cpu = cpu_seconds(qemus), cpu_seconds([server])
    t0 = time.perf_counter()
    code, out = await sender.run(
        f"time sh -c 'dd if=/dev/zero bs=1M count={mib} 2>/dev/null | nc 10.0.0.2 {PORT}'",
        timeout=max(600, mib * 10),
    )
    host = time.perf_counter() - t0
    cpu = cpu_seconds(qemus) - cpu[0], cpu_seconds([server]) - cpu[1]
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
    tests_on_path()
    from support.console import SerialShell

    result = ThroughputResult(size)
    api = httpx.AsyncClient(base_url=bench.url, headers=bench.headers, timeout=300)
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
            shell = await SerialShell.open(bench, node)
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
                kill_qemus([bench.qemu_pid(node["id"])])
    return result


def bench_throughput(bench: Bench, *, size: int, runs: int) -> ThroughputResult:
    return asyncio.run(_throughput(bench, size, runs))
