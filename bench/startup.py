"""Start-up of ``virtlab serve`` and of the CLI, this tree against another (A/B, alternating).

For each side and run: a server started over a new data directory and over one that exists (a
catalog at the newest migration, the accelerator verdict cached), timed from the spawn of
``virtlab serve`` until uvicorn says it is running (the tests' ``Server.start()``, whose login
afterwards is not counted); then ``virtlab --help`` and ``virtlab image list`` against that
server, from spawn to exit. Medians of ``--runs``. Nothing here is a target: the test suite
starts about a hundred servers and runs the CLI a few hundred times, so it pays these figures.

    .venv/bin/python -m bench.startup --runs 5 --baseline-src /path/to/other/src
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.common import REPO, server_env

_TESTS = str(REPO / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from support.server import Server  # noqa: E402  (importable once tests/ is on the path)

VIRTLAB = str(Path(sys.executable).with_name("virtlab"))
FIGURES = ("fresh", "existing", "cli --help", "cli image list")


class _TimedServer(Server):
    """``Server`` that notes when it was ready: ``start()`` logs in right after."""

    ready_at: float = 0.0
    ready_cpu: float = 0.0  # CPU seconds of the server (and its exited children) by then

    def login(self, name: str, password: str, kind: str = "api") -> str:
        if not self.ready_at:
            self.ready_at = time.perf_counter()
            assert self.proc is not None
            cpu = psutil.Process(self.proc.pid).cpu_times()
            self.ready_cpu = cpu.user + cpu.system + cpu.children_user + cpu.children_system
        return super().login(name, password, kind)


def _start(data_dir: Path, env: dict[str, str]) -> tuple[float, float, _TimedServer]:
    server = _TimedServer(data_dir, env=env)
    began = time.perf_counter()
    server.start()
    return server.ready_at - began, server.ready_cpu, server


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cli(env: dict[str, str], *args: str) -> tuple[float, float]:
    """Wall and CPU seconds of one CLI command (the servers running meanwhile are not reaped,
    so the children's CPU that grows is the command's)."""
    began, cpu = time.perf_counter(), _cpu_of_children()
    done = subprocess.run(
        [VIRTLAB, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )
    took = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"virtlab {' '.join(args)} failed: {done.stderr[-2000:]}")
    return took, _cpu_of_children() - cpu


def one_run(work: Path, env: dict[str, str], existing: Path) -> dict[str, tuple[float, float]]:
    """One run of every figure (wall, CPU) for the side whose environment is ``env``."""
    *fresh, server = _start(Path(tempfile.mkdtemp(prefix="f", dir=work)), env)
    server.stop()
    *again, server = _start(existing, env)
    try:
        client_env = {**env, **server.cli_env}
        return {
            "fresh": tuple(fresh),
            "existing": tuple(again),
            "cli --help": _cli(env, "--help"),
            "cli image list": _cli(client_env, "image", "list"),
        }  # type: ignore[return-value]
    finally:
        server.stop()


def bench_startup(work: Path, sides: dict[str, dict[str, str]], runs: int) -> dict[str, dict]:
    """Each figure (wall, CPU) of each run per side; the sides take turns going first."""
    existing = {name: work / f"existing-{i}" for i, name in enumerate(sides)}
    for name, env in sides.items():  # make each side's existing data directory
        *_, server = _start(existing[name], env)
        server.stop()
    samples: dict[str, dict[str, list]] = {n: {f: [] for f in FIGURES} for n in sides}
    for run in range(runs):
        order = list(sides)[run % len(sides) :] + list(sides)[: run % len(sides)]
        for name in order:
            for figure, value in one_run(work, sides[name], existing[name]).items():
                samples[name][figure].append(value)
    return samples


def report(samples: dict[str, dict[str, list]]) -> str:
    lines = []
    for figure in FIGURES:
        for name, figures in samples.items():
            walls, cpus = [w for w, _ in figures[figure]], [c for _, c in figures[figure]]
            runs = ", ".join(f"{v:.2f}" for v in walls)
            lines.append(
                f"  {figure:<15}{name:<9}: median {statistics.median(walls):6.3f} s, CPU "
                f"{statistics.median(cpus):6.3f} s   (runs: {runs})"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--baseline-src",
        type=Path,
        action="append",
        default=[],
        help="another tree's src/ to measure beside this one (A/B); may be given again",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    sides = {"this": server_env(REPO / "src")}
    for i, src in enumerate(args.baseline_src):
        sides[f"base{i + 1}" if len(args.baseline_src) > 1 else "baseline"] = server_env(src)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="vl-start-", dir=args.workdir) as tmp:
        results = bench_startup(Path(tmp), sides, args.runs)
    print(f"start-up, median of {args.runs} (load average before: {load}; after: "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())})")  # fmt: skip
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
