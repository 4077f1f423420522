"""The node-driver contract, run against the libvirt driver on an isolated libvirt host.

The contract's own test functions (``tests/test_node_driver_contract.py``) are imported and run
here with a ``harness`` fixture of this module: a :class:`LibvirtDriver` on host ``h1`` (a
libvirtd on 127.0.0.1 in its own mount namespace, ``tests/support/libvirt_hosts.py``). Its
parametrisation is left alone; the tests that need a local disk file are replaced by libvirt
versions below (the disk is a volume on the host). Checkpoints (internal snapshots in that
volume, ``virtlab.hosts.snapshots``) run the contract's own tests.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

libvirt = pytest.importorskip(
    "libvirt", reason="libvirt-python is not installed: pip install -e '.[libvirt]'"
)

import test_node_driver_contract as contract  # noqa: E402
from support.bootdisk import boot_disk  # noqa: E402
from support.fake_peers import short_dir  # noqa: E402
from support.libvirt_hosts import LibvirtHost, have_libvirtd  # noqa: E402
from support.qimg import convert  # noqa: E402
from test_node_driver_contract import (  # noqa: E402, F401  (run here, with this harness)
    Harness,
    test_a_checkpoint_resumes_the_machine_as_it_was,
    test_a_checkpoint_that_cannot_be_loaded_fails_the_start_but_not_a_cold_one,
    test_a_guest_that_ignores_the_button_is_stopped_hard,
    test_a_new_driver_adopts_a_running_machine,
    test_a_second_start_is_refused,
    test_a_suspended_machine_stays_suspended_and_a_tag_is_taken_once,
    test_actions_on_a_machine_that_does_not_run_are_refused,
    test_checkpoints_are_deleted_running_or_not_and_a_new_disk_has_none,
    test_dying_on_its_own_is_a_crash,
    test_kill_is_a_stop_not_a_crash,
    test_nothing_to_adopt_when_the_machine_is_gone,
    test_screenshot_is_a_png,
    test_suspend_and_resume,
)
from virtlab.errors import Conflict  # noqa: E402
from virtlab.hosts.connection import HostConnection  # noqa: E402
from virtlab.hosts.domain import domain_name  # noqa: E402
from virtlab.hosts.driver import LibvirtDriver  # noqa: E402
from virtlab.nodes.driver import NodeDriver  # noqa: E402
from virtlab.nodes.spec import Accel, NodeSpec  # noqa: E402
from virtlab.nodes.state import NodeState  # noqa: E402

NEEDS = "apt-get install libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients"
pytestmark = [pytest.mark.asyncio, pytest.mark.skipif(not have_libvirtd(), reason=NEEDS)]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = boot_disk(tmp_path_factory)
    return convert(raw, tmp_path_factory.mktemp("base") / "base.qcow2", "qcow2")


@pytest.fixture(scope="module")
def host() -> Iterator[LibvirtHost]:
    with short_dir("vlct-") as root, LibvirtHost.start(root / "h1") as h:
        yield h


@dataclass
class LibvirtHarness(Harness):
    """The contract's harness; a crash is QEMU killed on the host, by its pid there."""

    host: LibvirtHost | None = None

    async def crash(self, node_id: str) -> None:
        assert self.host is not None
        os.kill(self.host.qemu_pids()[domain_name(node_id)], signal.SIGKILL)


@pytest_asyncio.fixture
async def harness(host: LibvirtHost, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    conn = HostConnection("h1", host.uri)
    await conn.open()

    def make(kind: str, shared: dict | None = None) -> NodeDriver:
        return LibvirtDriver(conn, accel=Accel.TCG)

    monkeypatch.setattr(contract, "_make_driver", make)
    h = LibvirtHarness(make("libvirt"), host=host)

    async def on_exit(node_id: str, state: NodeState, detail: str) -> None:
        await h.exits.put((node_id, state, detail))

    h.driver.on_exit = on_exit
    yield h
    for node_id in list(getattr(h.driver, "_machines", {})):
        await h.driver.kill(node_id)
    await h.driver.close()
    await conn.close()


def _spec(tmp_path: Path, name: str = "n1") -> NodeSpec:
    return contract._spec(tmp_path, name)


async def test_start_then_stop_by_acpi(harness: Harness, tmp_path: Path, base: Path) -> None:
    """As the contract's, with the disk a volume on the host rather than a local file."""
    driver = harness.driver
    assert isinstance(driver, LibvirtDriver)
    spec = _spec(tmp_path)
    await driver.create_disk(spec, base, None)
    assert await driver.disk_key(spec) is not None
    await driver.start(spec)
    assert driver.state(spec.id) is NodeState.RUNNING
    await asyncio.wait_for(harness.booted(spec), 180)
    assert await driver.stop(spec.id, timeout=60) is True, "the guest powered off"
    node_id, state, _ = await harness.next_exit()
    assert (node_id, state) == (spec.id, NodeState.STOPPED)
    assert driver.state(spec.id) is NodeState.STOPPED
    assert not spec.paths.serial.exists(), "the console bridge is gone with the domain"


async def test_a_wipe_replaces_the_disk(harness: Harness, tmp_path: Path, base: Path) -> None:
    driver = harness.driver
    assert isinstance(driver, LibvirtDriver)
    spec = _spec(tmp_path)
    await driver.create_disk(spec, base, None)
    key = await driver.disk_key(spec)
    assert isinstance(harness, LibvirtHarness) and harness.host is not None and key is not None
    on_host = harness.host.folder("lib") / Path(key).relative_to("/var/lib/libvirt")
    await driver.storage.delete_disk(spec.id)
    assert await driver.disk_key(spec) is None
    assert not on_host.exists()
    with pytest.raises(Conflict, match="has no disk on host h1; wipe it"):
        await driver.start(spec)
    await driver.create_disk(spec, base, None)
    assert await driver.disk_key(spec) == key and on_host.exists(), "the same name, a new file"
