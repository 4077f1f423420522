"""Relay capacity (``blast``; host only, no guest, not through the server): what the relay
itself forwards. Two small Python processes stand in for two QEMUs, each binding a
``nic0.sock`` like QEMU; the sender ``sendto()``s ``--blast-frames`` frames of 1514 bytes
(a full Ethernet frame; a ``dgram`` netdev carries no larger ones) to its ``nic0.peer``
symlink, as QEMU does, with blocking sends (the kernel's flow control, so nothing is
lost); the sink counts them. Wired direct (kernel to kernel), through a
:class:`virtlab.links.Relay` running on an asyncio loop in this process, and through the
relay while it captures to a pcap file. Frames and MB/s from the first send to the last
frame received.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

FRAME = 1514  # a full Ethernet frame without FCS


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
