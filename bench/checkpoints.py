"""Lab checkpoints (``checkpoints``): a lab resumed from a checkpoint against the same lab
started cold, and what a checkpoint costs per node.

The lab is a ring of ``--nodes`` nodes (5 by default; ``bench.lab_deploy.ring_yaml``: 128 MiB
and two NICs each, the test disk), deployed stopped. "Answers on its console" means: a probe
typed on the node's serial WebSocket (``echo "__P""ROBEn__"``: the echo of the typed line never
matches) comes back as ``__PROBEn__``; it is typed again every second until it does.

cold: ``POST /api/labs/{lab}/start`` until every node answers. The probe is typed once the
boot marker is in (keys typed at the boot loader's prompt would stop its countdown); the
consoles' scrollback files are emptied before each cold run (the nodes are stopped then), so
the marker waited for is this boot's.
checkpoint: once the first cold run answers, ``POST /api/labs/{lab}/checkpoints`` (timed:
every node paused together, each saved into its disk, all run on); per node, how long its
save took (the lab's nodes stay paused until the last is saved) and the size of its saved
state (memory and devices) against its RAM.
resume: ``POST /api/labs/{lab}/checkpoints/{tag}/resume`` until every node answers; the probe
is typed at once (a resumed shell sits at its prompt; no boot, no marker).

Every run starts from stopped nodes: after each run, all the nodes are killed
(``POST /api/nodes/{id}/kill``, not timed). Best of ``--runs`` for each side, the sides
alternating (cold first: the first cold run gives the running lab the checkpoint is taken
from). Target: resume / cold at most 0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

from bench.files import MiB, human_bytes
from bench.lab_deploy import ring_yaml
from bench.lab_server import BOOT_TIMEOUT, RAM_MB, Bench, lab_server, run_list
from bench.node_lab import _until_marker, _ws_url
from bench.server import server_env

__all__ = ["CheckpointsResult", "bench_checkpoints", "main"]

TAG = "bench"
TARGET = 0.1
_probes = itertools.count()


@dataclass
class LabRun:
    reply: float  # the POST until its reply
    answers: list[float]  # per node, from the POST until its probe came back

    @property
    def seconds(self) -> float:
        return max(self.answers)


@dataclass
class NodeSave:
    name: str
    ram_mb: int
    vm_state_size: int
    save_seconds: float


@dataclass
class CheckpointsResult:
    count: int
    accel: str = ""
    cold: list[LabRun] = field(default_factory=list)
    resume: list[LabRun] = field(default_factory=list)
    checkpoint_seconds: float = 0.0  # POST .../checkpoints until its reply
    saves: list[NodeSave] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def best_cold(self) -> LabRun:
        return min(self.cold, key=lambda r: r.seconds)

    @property
    def best_resume(self) -> LabRun:
        return min(self.resume, key=lambda r: r.seconds)

    @property
    def ratio(self) -> float:
        if not self.cold or not self.resume:
            return float("nan")
        return self.best_resume.seconds / self.best_cold.seconds

    def report(self) -> str:
        lines = [
            f"lab checkpoints: a {self.count}-node ring ({self.accel or '?'}, {RAM_MB} MiB "
            f"each, the test disk), until every node answers on its serial console; best of "
            f"{len(self.cold)}"
        ]
        for label, runs, post in (("cold start", self.cold, "start"),
                                  ("resume from checkpoint", self.resume, "resume")):  # fmt: skip
            if not runs:
                continue
            best = min(runs, key=lambda r: r.seconds)
            lines += [
                f"  {label:<25}: {best.seconds:7.2f} s   (runs: "
                f"{run_list([r.seconds for r in runs])})",
                f"      POST …/{post:<14}: {best.reply:7.2f} s",
                f"      answers              : first {min(best.answers):.2f} s, median "
                f"{statistics.median(best.answers):.2f} s, last {max(best.answers):.2f} s",
            ]
        if self.cold and self.resume:
            met = "met" if self.ratio <= TARGET else "NOT met"
            lines.append(f"  ratio resume / cold      : {self.ratio:7.3f}   (target <= {TARGET}: "
                         f"{met})")  # fmt: skip
        if self.saves:
            total = sum(s.vm_state_size for s in self.saves)
            lines.append(
                f"  checkpoint of the lab    : {self.checkpoint_seconds:7.2f} s   (POST; all "
                f"nodes paused together, {human_bytes(total)} of machine state in all)"
            )
            for s in self.saves:
                lines.append(
                    f"      {s.name:<15}: saved in {s.save_seconds:5.2f} s: "
                    f"{human_bytes(s.vm_state_size):>10} = {s.vm_state_size / (s.ram_mb * MiB):.2f}"
                    f" x its {s.ram_mb} MiB of RAM"
                )
        lines.append(
            f"  every node answers       : {'yes' if not self.failures else 'NO'}"
            + (f"   ({'; '.join(self.failures[:3])})" if self.failures else "")
        )
        return "\n".join(lines)


# -- one node answering -------------------------------------------------------------------------


async def _answer(bench: Bench, node: dict[str, Any], t0: float, *, booting: bool) -> float:
    """From ``t0`` until the node's shell answers a probe typed on its serial console."""
    n = next(_probes)
    token, typed = f"__PROBE{n}__".encode(), f'echo "__P""ROBE{n}__"\r'
    async with connect(
        _ws_url(bench.url, node), additional_headers=bench.headers, max_queue=None
    ) as ws:
        if booting:
            await _until_marker(ws, node["name"])
        tail = b""
        while True:
            await ws.send(typed)
            deadline = time.monotonic() + 1.0
            while token not in tail and time.monotonic() < deadline:
                try:
                    data = await asyncio.wait_for(ws.recv(), deadline - time.monotonic())
                except TimeoutError:
                    break
                tail = (tail + (data if isinstance(data, bytes) else data.encode()))[-8192:]
            if token in tail:
                return time.perf_counter() - t0


async def _timed(bench: Bench, lab: str, path: str, *, booting: bool) -> LabRun:
    async with httpx.AsyncClient(
        base_url=bench.url, headers=bench.headers, timeout=BOOT_TIMEOUT
    ) as api:
        (await api.get("/api/health")).raise_for_status()  # the connection is open
        t0 = time.perf_counter()
        reply = await api.post(path)
        t1 = time.perf_counter()
        if reply.status_code != 200:
            raise RuntimeError(f"POST {path}: {reply.status_code} {reply.text}")
        nodes = (await api.get(f"/api/labs/{lab}")).json()["node_list"]
    answers = await asyncio.wait_for(
        asyncio.gather(*(_answer(bench, n, t0, booting=booting) for n in nodes)), BOOT_TIMEOUT
    )
    return LabRun(t1 - t0, list(answers))


# -- the lab between runs -----------------------------------------------------------------------


def _nodes(client: httpx.Client, lab: str) -> list[dict[str, Any]]:
    return client.get(f"/api/labs/{lab}").json()["node_list"]


def _kill_all(bench: Bench, lab: str) -> None:
    with httpx.Client(base_url=bench.url, headers=bench.headers, timeout=600) as client:
        for node in _nodes(client, lab):
            if node["state"] not in ("stopped", "crashed"):
                reply = client.post(f"/api/nodes/{node['id']}/kill")
                if reply.status_code != 200:
                    raise RuntimeError(f"kill {node['name']}: {reply.status_code} {reply.text}")


def _empty_scrollbacks(bench: Bench, lab: str) -> None:
    with httpx.Client(base_url=bench.url, headers=bench.headers, timeout=60) as client:
        for node in _nodes(client, lab):
            (bench.node_dir(node["id"]) / "serial.scrollback").write_bytes(b"")


def _take_checkpoint(bench: Bench, lab: str, result: CheckpointsResult) -> None:
    with httpx.Client(base_url=bench.url, headers=bench.headers, timeout=600) as client:
        t0 = time.perf_counter()
        reply = client.post(f"/api/labs/{lab}/checkpoints", json={"tag": TAG})
        result.checkpoint_seconds = time.perf_counter() - t0
        if reply.status_code != 201:
            raise RuntimeError(f"POST checkpoints: {reply.status_code} {reply.text}")
        result.saves = [
            NodeSave(n["node"], n["ram_mb"], n["vm_state_size"], n["save_seconds"])
            for n in reply.json()["nodes"]
        ]
        result.accel = reply.json()["nodes"][0]["accel"]


def bench_checkpoints(
    workdir: Path, *, count: int = 5, runs: int = 3, server_env: dict[str, str] | None = None,
    report: bool = False,
) -> CheckpointsResult:  # fmt: skip
    """Run the benchmark in ``workdir`` on a server of its own; ``report`` prints it."""
    workdir.mkdir(parents=True, exist_ok=True)
    result = CheckpointsResult(count)
    text = ring_yaml(count)
    lab = f"ring{count}"
    with lab_server(workdir, server_env) as bench:
        with httpx.Client(base_url=bench.url, headers=bench.headers, timeout=600) as client:
            reply = client.post(
                "/api/labs", content=text.encode(), params={"image": bench.image, "start": "false"},
                headers={"content-type": "application/yaml"},
            )  # fmt: skip
            if reply.status_code != 201:
                raise RuntimeError(f"POST /api/labs: {reply.status_code} {reply.text}")
        for run in range(runs):
            for side in ("cold", "resume"):
                try:
                    if side == "cold":
                        _empty_scrollbacks(bench, lab)
                        timed = asyncio.run(_timed(bench, lab, f"/api/labs/{lab}/start",
                                                   booting=True))  # fmt: skip
                        result.cold.append(timed)
                        if run == 0:
                            _take_checkpoint(bench, lab, result)
                    else:
                        path = f"/api/labs/{lab}/checkpoints/{TAG}/resume"
                        result.resume.append(asyncio.run(_timed(bench, lab, path, booting=False)))
                except (RuntimeError, TimeoutError, OSError, httpx.HTTPError) as exc:
                    result.failures.append(f"{side} run {run + 1}: {exc}")
                    if side == "cold" and run == 0:
                        break  # no checkpoint to resume from
                finally:
                    _kill_all(bench, lab)
            if result.failures and not result.saves:
                break
    if report:
        print("\n" + result.report(), flush=True)
    return result


def main(argv: list[str] | None = None) -> CheckpointsResult:
    parser = argparse.ArgumentParser(prog="python -m bench.checkpoints", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs per side (best kept)")
    parser.add_argument("--nodes", type=int, default=5, help="nodes in the ring")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temp dir")
    parser.add_argument("--server-src", type=Path, help="run the server from this src/ (A/B)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="virtlab-bench-", dir=args.workdir) as tmp:
        return bench_checkpoints(
            Path(tmp), count=args.nodes, runs=args.runs,
            server_env=server_env(args.server_src), report=True,
        )  # fmt: skip


if __name__ == "__main__":
    main()
