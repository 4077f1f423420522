"""One contract suite, run against the shipped fake driver and the real QEMU driver.

The QEMU side boots the tiny test disk under TCG; the fake side is instant. What one driver
does, the other must do: the node service above cannot tell them apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import pytest_asyncio

from support.bootdisk import boot_disk
from support.qimg import convert
from virtlab.consoles import SerialHub
from virtlab.devtools.bootdisk import BOOT_MARKER
from virtlab.errors import Conflict, ToolFailure
from virtlab.images.qemu_img import QemuImg
from virtlab.nodes.driver import FakeDriver, NodeDriver
from virtlab.nodes.qemu.driver import QemuDriver
from virtlab.nodes.spec import Accel, NodeSpec, RunPaths
from virtlab.nodes.state import NodeState

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = boot_disk(tmp_path_factory)
    return convert(raw, tmp_path_factory.mktemp("base") / "base.qcow2", "qcow2")


@dataclass
class Harness:
    """A driver, its exits as they are reported, and a way to make a machine die on its own."""

    driver: NodeDriver
    exits: asyncio.Queue = field(default_factory=asyncio.Queue)

    async def crash(self, node_id: str) -> None:
        if isinstance(self.driver, FakeDriver):
            await self.driver.crash(node_id)
        else:
            assert isinstance(self.driver, QemuDriver)
            pid = self.driver.pid(node_id)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)

    async def next_exit(self, timeout: float = 60) -> tuple[str, NodeState, str]:
        return await asyncio.wait_for(self.exits.get(), timeout)

    @contextlib.asynccontextmanager
    async def hub(self, spec: NodeSpec) -> AsyncIterator[SerialHub]:
        """A console hub on the node's serial: the first one takes over the connection the
        driver made before QEMU ran (which holds the guest's first bytes); later ones connect
        to the socket's path, as a restarted server's does."""
        hub = SerialHub(spec.paths.serial)
        await hub.start(sock=self.driver.console_socket(spec.id))
        try:
            yield hub
        finally:
            await hub.stop()

    async def booted(self, spec: NodeSpec) -> None:
        """Until the guest's OS runs (a power button pressed earlier is lost, as on hardware)."""
        if isinstance(self.driver, FakeDriver):
            return
        async with self.hub(spec) as hub:
            with hub.subscribe() as output:
                seen = b""
                async for chunk in output:
                    seen += chunk
                    if BOOT_MARKER.encode() in seen:
                        return

    async def shell(self, spec: NodeSpec, line: str, expect: str, timeout: float = 60) -> None:
        """Type ``line`` on the guest's serial console until ``expect`` shows (QEMU only: the
        fake has no guest)."""
        if isinstance(self.driver, FakeDriver):
            return

        async def typed() -> None:
            async with self.hub(spec) as hub:
                with hub.subscribe() as output:
                    await hub.write(line.encode() + b"\r")
                    seen = b""
                    async for chunk in output:
                        seen += chunk
                        if expect.encode() in seen:
                            return

        await asyncio.wait_for(typed(), timeout)


def _make_driver(kind: str, shared: dict | None = None) -> NodeDriver:
    if kind == "fake":
        return FakeDriver(shared)
    return QemuDriver(qemu_img=QemuImg())


@pytest_asyncio.fixture(params=["fake", "qemu"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    driver = _make_driver(request.param)
    h = Harness(driver)

    async def on_exit(node_id: str, state: NodeState, detail: str) -> None:
        await h.exits.put((node_id, state, detail))

    driver.on_exit = on_exit
    yield h
    for node_id in list(getattr(driver, "_machines", {})) + list(getattr(driver, "machines", {})):
        await driver.kill(node_id)
    await driver.close()


def _spec(tmp_path: Path, name: str = "n1") -> NodeSpec:
    return NodeSpec(
        id=f"{abs(hash((tmp_path, name))):032x}"[:32], name=name,
        paths=RunPaths(tmp_path / name), accel=Accel.TCG, ram_mb=128, vnc=True,
    )  # fmt: skip


async def _running(h: Harness, spec: NodeSpec, base: Path) -> NodeSpec:
    await h.driver.create_disk(spec, base, None)
    await h.driver.start(spec)
    return spec


async def test_start_then_stop_by_acpi(harness: Harness, tmp_path: Path, base: Path) -> None:
    spec = await _running(harness, _spec(tmp_path), base)
    assert spec.paths.disk.exists()
    assert harness.driver.state(spec.id) is NodeState.RUNNING
    await asyncio.wait_for(harness.booted(spec), 120)
    assert await harness.driver.stop(spec.id, timeout=60) is True, "the guest powered off"
    node_id, state, _ = await harness.next_exit()
    assert (node_id, state) == (spec.id, NodeState.STOPPED)
    assert harness.driver.state(spec.id) is NodeState.STOPPED


async def test_a_guest_that_ignores_the_button_is_stopped_hard(
    harness: Harness, tmp_path: Path, base: Path
) -> None:
    if isinstance(harness.driver, FakeDriver):
        pytest.skip("the fake's guests always obey")
    # Started with its vCPUs halted (-S), the guest never sees the power button.
    spec = await _running(harness, replace(_spec(tmp_path), start_paused=True), base)
    assert await harness.driver.stop(spec.id, timeout=1) is False
    assert (await harness.next_exit())[1] is NodeState.STOPPED


async def test_kill_is_a_stop_not_a_crash(harness: Harness, tmp_path: Path, base: Path) -> None:
    spec = await _running(harness, _spec(tmp_path), base)
    await harness.driver.kill(spec.id)
    assert (await harness.next_exit())[1] is NodeState.STOPPED


async def test_dying_on_its_own_is_a_crash(harness: Harness, tmp_path: Path, base: Path) -> None:
    spec = await _running(harness, _spec(tmp_path), base)
    await harness.crash(spec.id)
    node_id, state, detail = await harness.next_exit()
    assert (node_id, state) == (spec.id, NodeState.CRASHED)
    assert detail, "a crash carries the evidence"


async def test_suspend_and_resume(harness: Harness, tmp_path: Path, base: Path) -> None:
    spec = await _running(harness, _spec(tmp_path), base)
    await harness.driver.suspend(spec.id)
    assert harness.driver.state(spec.id) is NodeState.SUSPENDED
    await harness.driver.resume(spec.id)
    assert harness.driver.state(spec.id) is NodeState.RUNNING
    await harness.driver.reset(spec.id)
    assert harness.driver.state(spec.id) is NodeState.RUNNING


async def test_screenshot_is_a_png(harness: Harness, tmp_path: Path, base: Path) -> None:
    spec = await _running(harness, _spec(tmp_path), base)
    png = await harness.driver.screenshot(spec.id)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


async def test_a_second_start_is_refused(harness: Harness, tmp_path: Path, base: Path) -> None:
    spec = await _running(harness, _spec(tmp_path), base)
    with pytest.raises(Conflict, match="already runs"):
        await harness.driver.start(spec)


async def test_sockets_that_cannot_be_made_fail_the_start_and_leave_nothing(
    harness: Harness, tmp_path: Path, base: Path
) -> None:
    if not isinstance(harness.driver, QemuDriver):
        pytest.skip("the fake makes no sockets")
    spec = _spec(tmp_path)
    await harness.driver.create_disk(spec, base, None)
    spec.paths.qmp.mkdir()  # not a stale socket: a directory with something in it
    (spec.paths.qmp / "keep").write_text("not ours to remove")
    with pytest.raises(ToolFailure, match=r"cannot make the QMP and console sockets of node n1 "
                       r"in .*: .*; check that directory's permissions"):  # fmt: skip
        await harness.driver.start(spec)
    assert harness.driver.state(spec.id) is NodeState.STOPPED
    assert harness.driver.pid(spec.id) is None, "no QEMU was left running"
    assert (spec.paths.qmp / "keep").exists() and not spec.paths.serial.exists()
    assert harness.driver.console_socket(spec.id) is None


async def test_actions_on_a_machine_that_does_not_run_are_refused(harness: Harness) -> None:
    for action in (harness.driver.suspend, harness.driver.resume, harness.driver.screenshot):
        with pytest.raises(Conflict, match="has no running machine"):
            await action("0" * 32)


async def test_a_new_driver_adopts_a_running_machine(
    harness: Harness, tmp_path: Path, base: Path
) -> None:
    """A server restart: the machine outlives its driver and the next one takes it over."""
    spec = await _running(harness, _spec(tmp_path), base)
    await harness.driver.close()  # lets go, leaves it running
    shared = harness.driver.machines if isinstance(harness.driver, FakeDriver) else None
    successor = _make_driver(harness.driver.kind, shared)
    harness.driver = successor
    exits: asyncio.Queue = harness.exits

    async def on_exit(node_id: str, state: NodeState, detail: str) -> None:
        await exits.put((node_id, state, detail))

    successor.on_exit = on_exit
    assert await successor.adopt(spec) is NodeState.RUNNING
    assert successor.state(spec.id) is NodeState.RUNNING
    await harness.crash(spec.id)
    assert (await harness.next_exit())[1] is NodeState.CRASHED


async def test_nothing_to_adopt_when_the_machine_is_gone(harness: Harness, tmp_path: Path) -> None:
    assert await harness.driver.adopt(_spec(tmp_path, "ghost")) is None


async def test_a_wipe_replaces_the_disk(harness: Harness, tmp_path: Path, base: Path) -> None:
    spec = _spec(tmp_path)
    await harness.driver.create_disk(spec, base, None)
    first = spec.paths.disk.stat().st_ino
    await harness.driver.create_disk(spec, base, None)
    assert spec.paths.disk.stat().st_ino != first


# -- checkpoints --------------------------------------------------------------------------------


async def test_a_checkpoint_resumes_the_machine_as_it_was(
    harness: Harness, tmp_path: Path, base: Path
) -> None:
    spec = await _running(harness, _spec(tmp_path), base)
    await asyncio.wait_for(harness.booted(spec), 120)
    await harness.shell(spec, 'X=kept42; echo "set-$X"', "set-kept42")
    saved = await harness.driver.checkpoint(spec.id, "t1")
    assert (saved.tag, harness.driver.state(spec.id)) == ("t1", NodeState.RUNNING)
    assert saved.vm_state_size > 0 and saved.qemu_version
    assert saved.machine.startswith("pc-i440fx-"), "the alias pc, resolved"
    assert await harness.driver.checkpoints(spec) == {"t1": saved.vm_state_size}  # running
    await harness.shell(spec, 'X=changed; echo "now-$X"', "now-changed")  # it runs on
    await harness.driver.kill(spec.id)
    await harness.next_exit()
    assert await harness.driver.checkpoints(spec) == {"t1": saved.vm_state_size}  # stopped
    await harness.driver.start(replace(spec, loadvm="t1", machine=saved.machine))
    assert harness.driver.state(spec.id) is NodeState.RUNNING
    await harness.shell(spec, 'echo "was-$X"', "was-kept42")


async def test_a_suspended_machine_stays_suspended_and_a_tag_is_taken_once(
    harness: Harness, tmp_path: Path, base: Path
) -> None:
    spec = await _running(harness, _spec(tmp_path), base)
    await harness.driver.suspend(spec.id)
    await harness.driver.checkpoint(spec.id, "paused")
    assert harness.driver.state(spec.id) is NodeState.SUSPENDED
    with pytest.raises(ToolFailure, match="already exists"):
        await harness.driver.checkpoint(spec.id, "paused")
    assert harness.driver.state(spec.id) is NodeState.SUSPENDED
    await harness.driver.resume(spec.id)
    with pytest.raises(ToolFailure, match="already exists"):
        await harness.driver.checkpoint(spec.id, "paused")
    assert harness.driver.state(spec.id) is NodeState.RUNNING, "a failed save lets it run on"
    await harness.driver.checkpoint(spec.id, "running")
    assert set(await harness.driver.checkpoints(spec)) == {"paused", "running"}


async def test_a_checkpoint_that_cannot_be_loaded_fails_the_start_but_not_a_cold_one(
    harness: Harness, tmp_path: Path, base: Path
) -> None:
    spec = await _running(harness, _spec(tmp_path), base)
    await harness.driver.checkpoint(spec.id, "t1")
    await harness.driver.kill(spec.id)
    await harness.next_exit()
    for bad, words in (
        (replace(spec, loadvm="nope"), "Snapshot 'nope' does not exist"),
        (replace(spec, loadvm="t1", machine="pc-q35-7.2"), "Machine type received is 'pc-i440fx"),
    ):
        with pytest.raises(ToolFailure, match=words):
            await harness.driver.start(bad)
        assert harness.driver.state(spec.id) is NodeState.STOPPED
    await harness.driver.start(spec)  # no checkpoint: it boots
    assert harness.driver.state(spec.id) is NodeState.RUNNING


async def test_checkpoints_are_deleted_running_or_not_and_a_new_disk_has_none(
    harness: Harness, tmp_path: Path, base: Path
) -> None:
    spec = await _running(harness, _spec(tmp_path), base)
    for tag in ("a", "b", "c"):
        await harness.driver.checkpoint(spec.id, tag)
    await harness.driver.delete_checkpoint(spec, "a")  # running: a QMP job
    assert set(await harness.driver.checkpoints(spec)) == {"b", "c"}
    await harness.driver.kill(spec.id)
    await harness.next_exit()
    await harness.driver.delete_checkpoint(spec, "b")  # stopped: qemu-img
    assert set(await harness.driver.checkpoints(spec)) == {"c"}
    with pytest.raises(ToolFailure, match="b"):
        await harness.driver.delete_checkpoint(spec, "b")
    await harness.driver.create_disk(spec, base, None)  # a wipe
    assert await harness.driver.checkpoints(spec) == {}
