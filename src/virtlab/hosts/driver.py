"""The libvirt node driver: one host's nodes as transient domains, behind ``NodeDriver``.

One driver per host (phase 2 puts a router in front that sends each node to its host's
driver, the local host keeping :class:`virtlab.nodes.qemu.driver.QemuDriver`)::

    driver = await LibvirtDriver.open("h1", "qemu+tls://10.0.0.5/system", accel=Accel.TCG)
    await driver.create_disk(spec, base_qcow2, None)   # base pushed once, overlay on the host
    await driver.start(spec)      # paused; console stream attached; resumed unless start_paused

* **Start, stop and the rest** act on the node's running domain (:mod:`virtlab.hosts.lifecycle`).
* **Ends, adoption, and the host's comings and goings** (:mod:`virtlab.hosts.adoption`):
  lifecycle events tell a stop from a crash; while the host does not answer its nodes are
  *unknown*, and when it answers again they are looked up and re-adopted.
* Consoles: :class:`~virtlab.hosts.console.ConsoleBridge` at ``spec.paths.serial`` and
  :class:`~virtlab.hosts.vnc.VncBridge` at ``spec.paths.vnc``, so the console service works
  unchanged.
* Checkpoints are internal snapshots in the node's disk volume (:mod:`virtlab.hosts.snapshots`):
  saved by libvirt, resumed by a start with ``spec.loadvm``, listed and deleted whether the
  domain runs or not.
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from virtlab.hosts import snapshots
from virtlab.hosts.adoption import DomainAdoption
from virtlab.hosts.connection import HostConnection, HostStatus
from virtlab.hosts.domain import build_domain_xml, domain_name
from virtlab.hosts.errors import HostUnreachable
from virtlab.hosts.lifecycle import HostChangeCallback
from virtlab.nodes.checkpoints import SavedState
from virtlab.nodes.spec import Accel, NodeSpec

__all__ = ["HostChangeCallback", "LibvirtDriver"]


class LibvirtDriver(DomainAdoption):
    """The ``NodeDriver`` of one libvirt host: the lifecycle (``hosts/lifecycle.py``) and the
    adoption (``hosts/adoption.py``) of its domains, its disks, facts and checkpoints."""

    kind = "libvirt"

    @classmethod
    async def connect(
        cls, name: str, uri: str, timeout: float, accel: Accel | None = None
    ) -> tuple[LibvirtDriver, dict]:
        """A driver for a host of the server, and its facts; when it does not answer, the
        driver keeps trying in the background and the facts are empty (``down_reason`` says
        why). ``accel`` None: KVM where the host offers it."""
        host = HostConnection(name, uri, open_timeout=timeout)
        driver = cls(host, owns_host=True, accel=accel)
        try:
            await host.open()
        except HostUnreachable as exc:
            host.keep_trying(str(exc))
            return driver, {}
        try:
            return driver, await driver.describe()
        except HostUnreachable as exc:
            host.keep_trying(str(exc))
            return driver, {}

    @classmethod
    async def open(cls, name: str, uri: str, **kwargs: object) -> LibvirtDriver:
        """A driver with a connection of its own to ``uri`` (closed by :meth:`close`)."""
        host = HostConnection(name, uri)
        await host.open()
        return cls(host, owns_host=True, **kwargs)  # type: ignore[arg-type]

    # -- disks ----------------------------------------------------------------------------------

    async def create_disk(self, spec: NodeSpec, base: Path | None, size_mb: int | None) -> None:
        spec.paths.root.mkdir(parents=True, exist_ok=True)
        pushed = await self.storage.push_base(base) if base is not None else None
        await self.storage.create_disk(spec.id, pushed, size_mb)

    async def delete_disk(self, spec: NodeSpec) -> None:
        await self.storage.delete_disk(spec.id)

    async def remove_bases(self, doomed: Callable[[str], bool]) -> list[str]:
        """Delete the bases whose sha256 ``doomed`` dooms and no disk uses (``HostStorage``)."""
        return await self.storage.remove_bases(doomed)

    @property
    def reachable(self) -> bool:
        """Whether the host answers now."""
        return self.host.status is HostStatus.UP

    @property
    def down_reason(self) -> str:
        return self.host.down_reason

    def mark_down(self, reason: str) -> None:
        """The host did not answer a call of ours: down, its nodes unknown, until it answers."""
        self.host.lost(reason)

    async def describe(self) -> dict[str, object]:
        """The host's facts as plain data (versions, accelerators, CPUs, memory)."""
        info = await self.host.info()
        return {
            "hostname": info.hostname, "libvirt_version": info.libvirt_version,
            "qemu_version": info.qemu_version, "accelerators": list(info.accelerators),
            "cpus": info.cpus, "memory_mb": info.memory_mb,
            "free_memory_mb": info.free_memory_mb, "domains": info.domains,
            "address": self.host.address,
        }  # fmt: skip

    async def disk_key(self, spec: NodeSpec) -> str | None:
        """The host's key of the node's disk volume (a new one after every wipe), or None."""
        return await self.storage.disk_key(spec.id)

    # -- checkpoints: internal snapshots in the disk volume (hosts/snapshots.py) ----------------

    async def checkpoint(self, node_id: str, tag: str) -> SavedState:
        machine = self._get(node_id)
        return await snapshots.save(self.host, machine.dom, machine.spec.name, tag)

    async def checkpoints(self, spec: NodeSpec) -> dict[str, int]:
        machine = self._machines.get(spec.id)
        if machine is not None:
            return await snapshots.running_snapshots(self.host, machine.dom, spec.name)
        vol = await self.storage.disk_volume(spec.id)
        return {} if vol is None else await snapshots.volume_snapshots(self.host, vol, spec.name)

    async def delete_checkpoint(self, spec: NodeSpec, tag: str) -> None:
        machine = self._machines.get(spec.id)
        if machine is not None:
            await snapshots.delete(self.host, machine.dom, spec.name, tag)
            return
        bare = replace(spec, nics=(), serial=False, vnc=False, cdrom=None, loadvm=None,
                       uuid=None, extra_args=(), accel=await self._accel())  # fmt: skip
        root = ET.fromstring(build_domain_xml(bare, await self._placement(bare)))
        root.find("name").text = f"{domain_name(spec.id)}-disk"  # type: ignore[union-attr]
        await snapshots.delete_stopped(self.host, ET.tostring(root, encoding="unicode"),
                                       spec.name, tag)  # fmt: skip

    async def close(self) -> None:
        with contextlib.suppress(ValueError):
            self.host.listeners.remove(self)
        for machine in list(self._machines.values()):
            for bridge in (machine.console, machine.vnc):
                if bridge is not None:
                    await bridge.stop()
        self._machines.clear()
        for task in list(self._tasks):
            task.cancel()
        if self.owns_host:
            await self.host.close()
