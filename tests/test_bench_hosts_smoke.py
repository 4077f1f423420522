"""The libvirt hosts benchmark still runs: a small push (the real one is 1 GiB), one run each.
Nothing here is timed against a target."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "libvirt", reason="libvirt-python is not installed: pip install -e '.[libvirt]'"
)

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # `pytest` puts tests/ on the path, not the checkout with bench/
    sys.path.insert(0, ROOT)

from bench.files import MiB  # noqa: E402
from bench.hosts import bench_hosts, have_libvirtd  # noqa: E402

from support.fake_peers import short_dir  # noqa: E402

NEEDS = "apt-get install libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients"
pytestmark = [pytest.mark.timeout(300), pytest.mark.skipif(not have_libvirtd(), reason=NEEDS)]


def test_hosts_benchmark_runs_with_a_small_push() -> None:
    with short_dir("vbh-") as work:  # unix socket paths must stay short
        result = bench_hosts(work, runs=1, push_size=8 * MiB, env={})
    assert len(result.local) == len(result.remote) == len(result.push) == len(result.cp) == 1
    assert result.push_bytes == 8 * MiB and result.push_ratio > 0 and result.start_ratio > 0
    assert "push 8 MiB" in result.report()
