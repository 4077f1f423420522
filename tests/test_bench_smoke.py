"""The benchmarks still run: tiny sizes, one run each. Nothing here is timed against a target."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # `pytest` puts tests/ on the path, not the checkout with bench/
    sys.path.insert(0, ROOT)

from bench.common import MiB  # noqa: E402
from bench.import_vmdk import bench_import  # noqa: E402
from bench.upload import bench_upload  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def test_import_benchmark_runs(tmp_path: Path) -> None:
    result = bench_import(tmp_path, virtual_size=8 * MiB, data_size=4 * MiB, runs=1)

    assert len(result.virtlab) == len(result.bare) == len(result.duties) == 1
    assert result.best_virtlab.seconds > 0
    assert result.best_bare.convert > 0 and result.best_bare.compare > 0
    assert result.ratio > 0
    assert "ratio virtlab / bare" in result.report()
    assert not list(tmp_path.glob("*.vmdk")) and not list(tmp_path.glob("*.qcow2"))


def test_upload_benchmark_runs(tmp_path: Path) -> None:
    result = bench_upload(tmp_path, size=4 * MiB, runs=1)

    assert len(result.uploads) == len(result.cp) == len(result.cp_rw) == 1
    assert result.best_upload.seconds > 0 and min(result.cp) > 0
    assert result.ratio > 0
    assert result.peak_rss > 0 and result.baseline_rss > 0
    assert "ratio upload / cp" in result.report()
    assert not (tmp_path / "upload.img").exists()
    assert not list((tmp_path / "data" / "staging").iterdir())


def test_upload_paths_tool_runs(tmp_path: Path) -> None:
    from bench.upload_paths import measure

    speeds = measure(tmp_path, size=2 * MiB, runs=1, routes=("/drain", "/receive"))

    assert set(speeds) == {"/drain", "/receive", "cp"}
    assert all(len(v) == 1 and v[0] > 0 for v in speeds.values())
    assert not list(tmp_path.iterdir())
