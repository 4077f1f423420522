"""Labs and links: a ring deployed from YAML against the same QEMUs from a shell loop, and the
throughput of a plain link against a captured one.

One server serves both. The tiny bootable test disk (``virtlab.devtools.bootdisk``) is imported
with ``PUT`` and every guest boots it under the accelerator the server picked (TCG here).

(1) ``deploy``: bench/lab_deploy.py; (2) ``throughput``: bench/link_throughput.py;
(3) ``blast``: bench/relay_blast.py. Each module's docstring says how it measures.

Every QEMU of the server's data directory and of the bare runs is killed by its pid at the end,
whatever happened.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.files import MiB
from bench.lab_deploy import DeployResult, bench_deploy, ring_yaml
from bench.lab_server import lab_server
from bench.link_throughput import ThroughputResult, bench_throughput
from bench.relay_blast import BlastResult, bench_blast
from bench.server import server_env

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
