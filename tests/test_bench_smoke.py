"""The benchmarks still run: tiny sizes, one run each. Nothing here is timed against a target."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # `pytest` puts tests/ on the path, not the checkout with bench/
    sys.path.insert(0, ROOT)

from bench.files import GiB, MiB  # noqa: E402
from bench.import_vmdk import bench_import  # noqa: E402
from bench.nodes import bench_nodes  # noqa: E402
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


def test_node_benchmarks_run(tmp_path: Path) -> None:
    """Two nodes instead of twenty, one run of each side: real QEMU guests (TCG), about 15 s."""
    import psutil

    result = bench_nodes(
        tmp_path, runs=1, start_runs=1, overlay_runs=1, small_size=4 * MiB, big_size=40 * GiB,
        count=2,
    )  # fmt: skip

    start, overlay, many = result.start, result.overlay, result.many
    assert start is not None and overlay is not None and many is not None
    assert len(start.virtlab) == len(start.bare) == 1
    assert start.best_virtlab.seconds > 0 and start.best_bare.seconds > 0 and start.ratio > 0
    assert start.first, "a serial byte came through the WebSocket"
    assert "qemu-system" in start.argv[0] and "-accel" in start.argv
    assert all(len(v) == 1 and v[0] > 0 for v in (overlay.virtlab_small, overlay.virtlab_big,
                                                 overlay.bare_small, overlay.bare_big))  # fmt: skip
    assert overlay.ratio > 0
    assert many.count == 2 and many.all_reached, many.failures
    assert len(many.marker) == 2 and many.rss_before > 0 and many.rss_after > 0
    assert many.qemu_rss > 0
    report = result.report()
    for line in ("ratio virtlab / bare", "ratio 40.0 GiB / 4.0 MiB", "all 2 reach the marker"):
        assert line in report
    # Nothing is left running or lying around: no QEMU of this data directory, no scratch disk.
    here = str(tmp_path)
    for proc in psutil.process_iter(["name", "cmdline"]):
        if "qemu" in (proc.info["name"] or ""):
            assert not any(here in arg for arg in proc.info["cmdline"] or []), proc.info
    assert not (tmp_path / "bare-node").exists() and not (tmp_path / "boot.img").exists()
    assert not list((tmp_path / "data" / "nodes").iterdir())


def test_load_benchmark_runs(tmp_path: Path) -> None:
    from bench.load import bench_load

    result = bench_load(tmp_path, clients=4, nodes=1, requests=2, data_mib=4)

    assert len(result.quiet.latencies) >= 4 * 2 and len(result.loaded.latencies) >= 4 * 2
    assert not result.quiet.failures and not result.loaded.failures
    assert result.ratio > 0 and result.import_seconds > 0
    assert result.loaded.loop["samples"] > 0
    assert "ratio p99 loaded / quiet" in result.report()
