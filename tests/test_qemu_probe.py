"""The host probe: binaries, versions, and an accelerator verdict that KVM has to earn.

On the machines this project is built on, ``/dev/kvm`` opens but ``-cpu host`` aborts and
guests hang, so the real ``auto`` probe must come out TCG by itself. Wrapper scripts in
``tmp_path`` stand in for QEMU where a test needs to count invocations or fake a hang.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from virtlab.errors import InvalidRequest
from virtlab.nodes.qemu.probe import (
    PROBE_EXIT_CODE,
    AccelUnavailable,
    QemuBinary,
    QemuNotFound,
    boot_sector,
    default_cache_path,
    find_binaries,
    kvm_device_problem,
    probe_accelerator,
    qemu_version,
    run_probe_guest,
)
from virtlab.nodes.spec import Accel

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
needs_kvm_device = pytest.mark.skipif(
    kvm_device_problem() is not None, reason="/dev/kvm is not usable here"
)


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def recorder(tmp_path: Path, target: str) -> tuple[Path, Path]:
    """A wrapper that logs its arguments, one line per call, then runs ``target``."""
    log = tmp_path / "calls.log"
    body = f'printf "%s\\n" "$*" >> {shlex.quote(str(log))}\nexec {shlex.quote(target)} "$@"\n'
    return script(tmp_path / "qemu-wrapper", body), log


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_boot_sector() -> None:
    sector = boot_sector()
    assert len(sector) == 512 and sector.endswith(b"\x55\xaa")


@needs_qemu
def test_find_binaries() -> None:
    found = find_binaries()
    assert found.system.version.count(".") >= 1 and found.img.version == found.system.version
    assert "QEMU" in found.system.banner
    with pytest.raises(QemuNotFound, match="not on PATH"):
        find_binaries(system="qemu-system-nonexistent")


def test_version_of_something_else(tmp_path: Path) -> None:
    fake = script(tmp_path / "fake", "echo hello\n")
    with pytest.raises(QemuNotFound, match="did not print a QEMU version"):
        qemu_version(str(fake))


@needs_qemu
def test_probe_guest_runs_under_tcg() -> None:
    """The positive control: the probe guest itself is correct (it runs and exits as planned)."""
    result = run_probe_guest(QEMU or "", Accel.TCG)
    assert result.ok, result.detail
    assert result.returncode == PROBE_EXIT_CODE and result.seconds < 5


@needs_qemu
@needs_kvm_device
def test_real_auto_probe_says_tcg_on_this_host(tmp_path: Path) -> None:
    cache = default_cache_path(tmp_path)
    verdict = probe_accelerator("auto", cache_path=cache)
    assert verdict.accel is Accel.TCG  # this host: /dev/kvm opens, KVM guests do not run
    assert verdict.reason.startswith("KVM: /dev/kvm opens, but under -accel kvm -cpu host")
    assert verdict.reason.endswith("using TCG") and not verdict.cached
    [entry] = json.loads(cache.read_text())["verdicts"].values()
    assert entry["accel"] == "tcg"


@needs_qemu
@needs_kvm_device
def test_the_cache_spares_the_second_probe(tmp_path: Path) -> None:
    wrapper, log = recorder(tmp_path, QEMU or "")
    qemu = qemu_version(str(wrapper))
    assert calls(log) == ["--version"]
    cache = tmp_path / "cache" / "accel.json"
    first = probe_accelerator("auto", cache_path=cache, qemu=qemu)
    assert len(calls(log)) == 2 and "-accel kvm -cpu host" in calls(log)[1]
    second = probe_accelerator("auto", cache_path=cache, qemu=qemu)
    assert len(calls(log)) == 2  # nothing spawned
    assert second == replace(first, cached=True)
    again = probe_accelerator("auto", cache_path=cache, qemu=qemu, refresh=True)
    assert len(calls(log)) == 3 and not again.cached
    other = replace(qemu, banner="QEMU emulator version 9.9.9")  # an upgrade: probe again
    probe_accelerator("auto", cache_path=cache, qemu=other)
    assert len(calls(log)) == 4
    assert len(json.loads(cache.read_text())["verdicts"]) == 2


@needs_qemu
@needs_kvm_device
@pytest.mark.parametrize(
    "content",
    ["{not json", "[]", '{"format": 1, "verdicts": []}', '{"format": 0, "verdicts": {}}', "KEY"],
)
def test_a_corrupt_cache_is_ignored_and_rewritten(tmp_path: Path, content: str) -> None:
    wrapper, log = recorder(tmp_path, QEMU or "")
    qemu = qemu_version(str(wrapper))
    cache = tmp_path / "accel.json"
    if content == "KEY":  # the right key, with nonsense in it
        key = f"{wrapper}|{qemu.banner}|{os.uname().release}"
        content = json.dumps({"format": 1, "verdicts": {key: {"accel": "warp", "reason": 1}}})
    cache.write_text(content)
    verdict = probe_accelerator("auto", cache_path=cache, qemu=qemu)
    assert not verdict.cached and len(calls(log)) == 2
    data = json.loads(cache.read_text())
    assert data["format"] == 1
    assert [e["accel"] for e in data["verdicts"].values()] == [verdict.accel.value]
    assert probe_accelerator("auto", cache_path=cache, qemu=qemu).cached


def test_tcg_requested_spawns_nothing(tmp_path: Path) -> None:
    wrapper, log = recorder(tmp_path, "/bin/false")
    qemu = QemuBinary(str(wrapper), "7.2.22", "QEMU emulator version 7.2.22")
    cache = tmp_path / "accel.json"
    for requested in ("tcg", Accel.TCG, "TCG"):
        verdict = probe_accelerator(requested, cache_path=cache, qemu=qemu)
        assert verdict.accel is Accel.TCG and "TCG requested" in verdict.reason
    assert calls(log) == [] and not cache.exists()


def test_auto_without_a_kvm_device_spawns_nothing(tmp_path: Path) -> None:
    wrapper, log = recorder(tmp_path, "/bin/false")
    qemu = QemuBinary(str(wrapper), "7.2.22", "QEMU emulator version 7.2.22")
    missing = tmp_path / "kvm"
    cache = tmp_path / "c.json"
    verdict = probe_accelerator("auto", cache_path=cache, qemu=qemu, kvm_device=missing)
    assert verdict.accel is Accel.TCG
    assert verdict.reason == (
        f"KVM: {missing} does not exist (no KVM module loaded, or no hardware virtualisation); "
        "using TCG"
    )
    assert calls(log) == [] and not cache.exists()


def test_kvm_requested_checks_the_device(tmp_path: Path) -> None:
    with pytest.raises(AccelUnavailable, match=r"KVM was requested, but .* does not exist"):
        probe_accelerator("kvm", cache_path=tmp_path / "c.json", kvm_device=tmp_path / "kvm")
    with pytest.raises(AccelUnavailable, match="is not a KVM device"):
        probe_accelerator("kvm", cache_path=tmp_path / "c.json", kvm_device=Path("/dev/null"))


@needs_kvm_device
def test_kvm_requested_is_granted_without_a_probe(tmp_path: Path) -> None:
    wrapper, log = recorder(tmp_path, "/bin/false")
    qemu = QemuBinary(str(wrapper), "7.2.22", "QEMU emulator version 7.2.22")
    verdict = probe_accelerator("kvm", cache_path=tmp_path / "c.json", qemu=qemu)
    assert verdict.accel is Accel.KVM and calls(log) == []


def test_unknown_accelerator() -> None:
    with pytest.raises(InvalidRequest, match="auto, kvm or tcg"):
        probe_accelerator("hvf", cache_path=Path("/nonexistent/c.json"))


def test_a_hanging_guest_is_killed_by_pid(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    hang = script(tmp_path / "hang", f"echo $$ > {shlex.quote(str(pidfile))}\nexec sleep 60\n")
    result = run_probe_guest(str(hang), Accel.KVM, timeout=0.5)
    assert not result.ok and result.returncode is None
    assert result.detail == "a test guest did not run within 0.5 s"
    with pytest.raises(ProcessLookupError):
        os.kill(int(pidfile.read_text()), 0)  # killed and reaped


@needs_kvm_device
def test_auto_with_a_hanging_guest_says_why(tmp_path: Path) -> None:
    hang = script(tmp_path / "hang", "exec sleep 60\n")
    qemu = QemuBinary(str(hang), "7.2.22", "QEMU emulator version 7.2.22")
    verdict = probe_accelerator("auto", cache_path=tmp_path / "c.json", qemu=qemu, timeout=0.5)
    assert verdict.accel is Accel.TCG
    assert verdict.reason == (
        "KVM: /dev/kvm opens, but under -accel kvm -cpu host a test guest did not run within "
        "0.5 s (guests hang or crawl under KVM on this host); using TCG"
    )


def test_a_failing_guest_reports_what_it_said(tmp_path: Path) -> None:
    fail = script(tmp_path / "fail", "echo 'qemu: boom' >&2\nexit 3\n")
    result = run_probe_guest(str(fail), Accel.KVM)
    assert not result.ok and result.returncode == 3
    assert result.detail == "the test guest failed (exit 3): qemu: boom"
    abort = script(tmp_path / "abort", "kill -ABRT $$\n")
    assert "killed by SIGABRT" in run_probe_guest(str(abort), Accel.KVM).detail
