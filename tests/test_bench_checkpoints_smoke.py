"""bench/checkpoints.py still runs: a 2-node ring started cold, checkpointed and resumed, one
run each side. Nothing here is timed against the target."""

from __future__ import annotations

import sys
from pathlib import Path

import psutil
import pytest

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # `pytest` puts tests/ on the path, not the checkout with bench/
    sys.path.insert(0, ROOT)

from bench.checkpoints import bench_checkpoints  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def test_the_checkpoint_benchmark_runs(tmp_path: Path) -> None:
    result = bench_checkpoints(tmp_path, count=2, runs=1)

    assert not result.failures, result.failures
    assert len(result.cold) == len(result.resume) == 1
    assert len(result.best_cold.answers) == len(result.best_resume.answers) == 2
    assert result.ratio > 0 and result.accel
    assert [s.name for s in result.saves] == ["n1", "n2"]
    assert all(0 < s.vm_state_size <= 2 * s.ram_mb << 20 for s in result.saves)
    assert result.checkpoint_seconds > 0
    report = result.report()
    for line in ("cold start", "resume from checkpoint", "ratio resume / cold", "x its 128 MiB"):
        assert line in report
    # Nothing is left running: no QEMU of this directory.
    here = str(tmp_path)
    for proc in psutil.process_iter(["name", "cmdline"]):
        if "qemu" in (proc.info["name"] or ""):
            assert not any(here in arg for arg in proc.info["cmdline"] or []), proc.info
