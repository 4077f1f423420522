"""bench/labs.py still runs: a 2-node ring, one run of each side, a small transfer and a small
relay blast. Nothing here is timed against a target."""

from __future__ import annotations

import sys
from pathlib import Path

import psutil
import pytest

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # `pytest` puts tests/ on the path, not the checkout with bench/
    sys.path.insert(0, ROOT)

from bench.files import MiB  # noqa: E402
from bench.labs import bench_labs, ring_yaml  # noqa: E402

pytestmark = pytest.mark.timeout(180)


def test_ring_file_is_the_example_for_ten() -> None:
    assert ring_yaml(10).startswith("# yaml-language-server")
    two = ring_yaml(2)
    assert 'endpoints: ["n1:eth1", "n2:eth0"]' in two
    assert 'endpoints: ["n2:eth1", "n1:eth0"]' in two


def test_lab_benchmarks_run(tmp_path: Path) -> None:
    """Real guests (TCG): a 2-node ring deployed twice (virtlab, then the shell loop), two
    guests sending 2 MiB through a plain and a captured link, and a relay blast."""
    result = bench_labs(tmp_path, count=2, runs=1, size=2 * MiB, blast_frames=2_000)

    deploy, throughput, blast = result.deploy, result.throughput, result.blast
    assert deploy is not None and throughput is not None and blast is not None
    assert not deploy.failures, deploy.failures
    assert len(deploy.virtlab) == len(deploy.bare) == 1
    assert len(deploy.best_virtlab.markers) == len(deploy.best_bare.markers) == 2
    assert deploy.ratio > 0 and deploy.accel
    assert len(throughput.plain) == len(throughput.captured) == 1
    assert all(t.received >= 2 * MiB for t in throughput.plain + throughput.captured)
    assert throughput.relayed == {"during": True, "after": False}
    assert throughput.pcap_bytes and throughput.pcap_bytes[0] > 2 * MiB
    assert set(blast.seconds) == {"direct", "relay", "relay + capture"}
    assert all(got == 2_000 for got in blast.received.values()), blast.received
    report = result.report()
    for line in ("ratio virtlab / bare", "ratio captured / plain", "relay / direct"):
        assert line in report
    # Nothing is left running or lying around: no QEMU of this directory, no scratch files.
    here = str(tmp_path)
    for proc in psutil.process_iter(["name", "cmdline"]):
        if "qemu" in (proc.info["name"] or ""):
            assert not any(here in arg for arg in proc.info["cmdline"] or []), proc.info
    assert not (tmp_path / "bare").exists() and not (tmp_path / "blast").exists()
    assert not list((tmp_path / "data" / "nodes").iterdir())
