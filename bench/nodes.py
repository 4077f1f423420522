"""Nodes: start-up against bare QEMU, overlay creation against the base's size, many at once.

One server serves the three benchmarks. Before it starts, two base images are dropped into
DATA/images (the start-up scan registers them, as it does any file an administrator puts
there): ``base-small.qcow2``, ``--small-mib`` (default 64) MiB of random data, and
``base-big.qcow2``, an empty 40 GiB qcow2 (``qemu-img create``: instant and sparse). The tiny
bootable test disk (``virtlab.devtools.bootdisk``) is then imported with ``PUT``; every node
boots it under the accelerator the server picked (TCG on these machines), with ``ram_mb`` 128.

(1) Create + start until the first serial byte.
    virtlab: ``POST /api/nodes`` with ``"start": true`` (one request: the overlay, then the
    machine; against an older server given with ``--server-src`` that makes a stopped node,
    ``POST /api/nodes/{id}/start`` follows and the report says so), then the serial
    WebSocket ``/api/nodes/{id}/console/serial`` until its first byte (the hub keeps a
    scrollback, so a byte written before the socket connected is not lost).
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
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.files import GiB, MiB
from bench.many_nodes import ManyResult, bench_many
from bench.node_lab import node_lab
from bench.node_start import StartResult, bench_start
from bench.overlay import OverlayResult, bench_overlay
from bench.server import server_env

__all__ = [
    "ManyResult",
    "NodesResult",
    "OverlayResult",
    "StartResult",
    "bench_nodes",
    "main",
]

WHICH = ("start", "overlay", "many")


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
