"""Overlay creation against the base's size: benchmark (2) of ``python -m bench.nodes``."""

from __future__ import annotations

import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.files import human_bytes
from bench.node_lab import Lab, _spec

__all__ = ["OverlayResult", "bench_overlay"]

OVERLAY_NOISE = (0.8, 1.25)  # 40 GiB / 64 MiB: "the same time within noise"


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
