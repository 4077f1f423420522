"""``virtlab doctor``, run through typer's CliRunner on a small app around the command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from virtlab.cli.doctor import doctor
from virtlab.errors import InvalidRequest
from virtlab.nodes.ports import DEFAULT_TELNET_PORTS, DEFAULT_VNC_PORTS, PortRange
from virtlab.nodes.qemu.probe import default_cache_path

needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed"
)
app = typer.Typer()
app.command()(doctor)
runner = CliRunner()
ENV = {"VIRTLAB_ACCEL": None, "VIRTLAB_TELNET_PORTS": None, "VIRTLAB_VNC_PORTS": None}


@needs_qemu
def test_json_report(tmp_path: Path) -> None:
    done = runner.invoke(app, ["--data-dir", str(tmp_path), "--json"], env=ENV)
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["accelerator"]["accel"] == "tcg"  # on this host, KVM guests do not run
    assert report["accelerator"]["requested"] == "auto"
    assert "KVM" in report["accelerator"]["reason"]
    assert report["qemu"]["system"]["version"].startswith(("7.", "8.", "9.", "10."))
    assert report["qemu"]["img"]["path"].endswith("qemu-img")
    assert report["data_dir"]["free_bytes"] > 0
    assert report["ports"]["telnet"] == {"start": 5000, "end": 5899, "count": 900}
    assert report["ports"]["vnc"] == {"start": 5900, "end": 6899, "count": 1000}
    assert report["problems"] == [] and report["notes"] == []
    assert default_cache_path(tmp_path).exists()
    again = json.loads(runner.invoke(app, ["--data-dir", str(tmp_path), "--json"]).stdout)
    assert again["accelerator"]["cached"] is True


@needs_qemu
def test_table_and_options(tmp_path: Path) -> None:
    args = ["--data-dir", str(tmp_path / "not" / "yet"), "--accel", "tcg"]
    args += ["--telnet-ports", "5000-5999", "--vnc-ports", "5900-6999"]
    done = runner.invoke(app, args, env={**ENV, "COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    assert "qemu-system-x86_64" in done.stdout and "TCG requested" in done.stdout
    assert "5000-5999 (1000)" in done.stdout
    assert "overlap" in done.stderr  # a note, not a failure


def test_missing_qemu_is_a_problem(tmp_path: Path) -> None:
    env = {**ENV, "PATH": str(tmp_path)}
    done = runner.invoke(app, ["--data-dir", str(tmp_path), "--json", "--accel", "tcg"], env=env)
    assert done.exit_code == 1
    report = json.loads(done.stdout)
    assert report["qemu"] is None
    assert "qemu-system-x86_64 is not on PATH" in report["problems"][0]
    assert report["accelerator"]["accel"] == "tcg"


def test_bad_port_range(tmp_path: Path) -> None:
    done = runner.invoke(app, ["--data-dir", str(tmp_path), "--telnet-ports", "9-2"], env=ENV)
    assert done.exit_code == 2
    assert "invalid port range 9-2" in done.stderr


def test_port_range() -> None:
    ports = PortRange.parse(" 5000 - 5002 ")
    assert (ports.start, ports.end, ports.size, str(ports)) == (5000, 5002, 3, "5000-5002")
    assert list(ports) == [5000, 5001, 5002] and 5001 in ports and 5003 not in ports
    assert PortRange.parse("7000") == PortRange(7000, 7000)
    assert ports.overlaps(PortRange(5002, 6000)) and not ports.overlaps(PortRange(5003, 6000))
    assert not DEFAULT_TELNET_PORTS.overlaps(DEFAULT_VNC_PORTS)
    for bad in ("", "a-b", "0-10", "10-70000", "5-"):
        with pytest.raises(InvalidRequest, match="invalid port range"):
            PortRange.parse(bad)


@needs_qemu
def test_limits_come_from_the_settings(tmp_path: Path) -> None:
    env = {**ENV, "VIRTLAB_HOST_MEMORY_MB": "4096", "VIRTLAB_MEMORY_RESERVE_MB": "512",
           "VIRTLAB_MEMORY_OVERCOMMIT": "1.5", "VIRTLAB_MAX_NODES_PER_USER": "7",
           "VIRTLAB_MAX_CONCURRENT_IMPORTS": "3"}  # fmt: skip
    done = runner.invoke(app, ["--data-dir", str(tmp_path), "--json"], env=env)
    assert done.exit_code == 0, done.output
    limits = json.loads(done.stdout)["limits"]
    assert limits["memory"] == {
        "host_mb": 4096, "reserve_mb": 512, "overcommit": 1.5, "capacity_mb": 5376
    }  # fmt: skip
    assert (limits["max_nodes_per_user"], limits["max_concurrent_imports"]) == (7, 3)
    # A reserve as large as the host leaves nodes nothing: a problem.
    env |= {"VIRTLAB_MEMORY_RESERVE_MB": "4096", "COLUMNS": "200"}
    done = runner.invoke(app, ["--data-dir", str(tmp_path)], env=env)
    assert done.exit_code == 1
    assert "nodes may be promised no memory" in done.stderr
    assert "VIRTLAB_MEMORY_RESERVE_MB" in done.stderr
