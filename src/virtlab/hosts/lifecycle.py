"""How the libvirt driver starts and ends its nodes' domains (a base of :class:`LibvirtDriver`).

* **Start** defines nothing: ``createXML(…, START_PAUSED)`` makes a transient domain (a stopped
  node leaves nothing behind on the host), the console stream is attached while the vCPUs are
  halted, then it runs. ``spec.start_paused`` leaves it halted for the service's ``resume``.
* **Ends**: ACPI power-down then destroy; a stop or kill waits for the host's STOPPED event
  (:mod:`virtlab.hosts.adoption` hears it), or asks the host when it never comes.
* Reset, suspend, resume, screenshots and link state act on the running domain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import PurePosixPath

import libvirt

from virtlab.errors import Conflict
from virtlab.hosts.connection import HostConnection
from virtlab.hosts.console import ConsoleBridge
from virtlab.hosts.domain import Placement, build_domain_xml, domain_name, link_state_xml
from virtlab.hosts.errors import HostFailure
from virtlab.hosts.machine import Machine as _Machine
from virtlab.hosts.screens import as_png
from virtlab.hosts.vnc import VncBridge
from virtlab.hosts.volumes import HostStorage
from virtlab.nodes.driver import NodeDriver
from virtlab.nodes.spec import Accel, NodeSpec
from virtlab.nodes.state import NodeState

__all__ = ["DomainLifecycle", "HostChangeCallback"]

log = logging.getLogger("virtlab.hosts")
HostChangeCallback = Callable[[str, bool, list[str]], Awaitable[None]]
"""``(host name, up, node ids)``: the host stopped answering (False) or answers again (True)."""


class DomainLifecycle(NodeDriver):
    """One host's connection, storage and running machines; start, stop and act on them."""

    def __init__(
        self,
        host: HostConnection,
        *,
        accel: Accel | None = None,
        storage: HostStorage | None = None,
        owns_host: bool = False,
        stop_event_timeout: float = 30.0,
    ) -> None:
        super().__init__()
        self.host = host
        self.accel = accel  # None: KVM when the host offers it, else TCG (decided at start)
        self.storage = storage or HostStorage(host)
        self.owns_host = owns_host
        self.stop_event_timeout = stop_event_timeout
        self.on_host_change: HostChangeCallback | None = None
        self._machines: dict[str, _Machine] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        host.listeners.append(self)

    async def _placement(self, spec: NodeSpec) -> Placement:
        pool = await self.storage.pool()
        name = self.storage.disk_name(spec.id)
        try:
            xml = await self.host.call(
                f"find the disk of node {spec.name}",
                lambda: pool.storageVolLookupByName(name).XMLDesc(0),
            )
        except HostFailure as exc:
            if exc.code == libvirt.VIR_ERR_NO_STORAGE_VOL:
                raise Conflict(
                    f"node {spec.name} has no disk on host {self.host.name}; wipe it to make one"
                ) from exc
            raise
        backing = ET.fromstring(xml).findtext("backingStore/path")
        cdrom = await self.storage.push_base(spec.cdrom) if spec.cdrom is not None else None
        return Placement(
            overlay=self.storage.disk_path(spec.id), address=self.host.address,
            serial_log=PurePosixPath(f"/var/log/libvirt/qemu/{domain_name(spec.id)}-serial.log"),
            base=PurePosixPath(backing) if backing else None,
            cdrom=cdrom.path if cdrom is not None else None,
        )  # fmt: skip

    async def _accel(self) -> Accel:
        if self.accel is None:
            info = await self.host.info()
            self.accel = Accel.KVM if "kvm" in info.accelerators else Accel.TCG
        return self.accel

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, spec: NodeSpec) -> None:
        if spec.id in self._machines:
            raise Conflict(f"node {spec.name} already runs")
        spec = replace(spec, accel=await self._accel())
        xml = build_domain_xml(spec, await self._placement(spec))
        conn = self.host.conn
        dom = await self.host.call(f"start node {spec.name}", conn.createXML, xml,
                                   libvirt.VIR_DOMAIN_START_PAUSED)  # fmt: skip
        machine = _Machine(spec, dom)
        self._machines[spec.id] = machine
        try:
            await self._attach(machine)
            if not spec.start_paused:
                await self.host.call(f"run node {spec.name}", dom.resume)
        except BaseException:
            machine.expected_exit = True
            with contextlib.suppress(Exception):
                await self.host.call("destroy a failed start", dom.destroy)
            await self._end(machine, NodeState.STOPPED, report=False)
            raise

    async def _attach(self, machine: _Machine) -> None:
        """Consoles of a domain that runs (paused or not): serial stream, VNC bridge."""
        spec = machine.spec
        if spec.serial:
            if machine.console is None:
                machine.console = ConsoleBridge(spec.paths.serial, spec.name)
                await machine.console.start()
            await machine.console.attach(self.host, machine.dom)
        if spec.vnc:
            live = await self.host.call("read a domain", machine.dom.XMLDesc, 0)
            port = int(ET.fromstring(live).find("devices/graphics").get("port", "0"))  # type: ignore[union-attr]
            if machine.vnc is None:
                machine.vnc = VncBridge(spec.paths.vnc, self.host.address, port)
                await machine.vnc.start()
            machine.vnc.port = port

    def _get(self, node_id: str) -> _Machine:
        machine = self._machines.get(node_id)
        if machine is None:
            raise Conflict(f"node {node_id} has no running machine")
        return machine

    async def _end(self, machine: _Machine, state: NodeState, detail: str = "",
                   *, report: bool = True) -> None:  # fmt: skip
        if self._machines.get(machine.spec.id) is not machine:
            return
        del self._machines[machine.spec.id]
        for bridge in (machine.console, machine.vnc):
            if bridge is not None:
                await bridge.stop()
        try:  # the end is reported before a stop or kill waiting on it returns
            if report:
                await self._exited(machine.spec.id, state, detail)
        finally:
            machine.ended.set()

    async def _wait_ended(self, machine: _Machine) -> None:
        """Until the host's STOPPED event; then, if it never came, ask the host directly."""
        try:
            await asyncio.wait_for(machine.ended.wait(), self.stop_event_timeout)
        except TimeoutError:
            await self._check_gone(machine)

    async def _check_gone(self, machine: _Machine) -> None:
        try:
            active = await self.host.call("look at a domain", machine.dom.isActive)
        except HostFailure:
            active = 0
        if not active:
            await self._end(machine, NodeState.STOPPED)

    async def stop(self, node_id: str, timeout: float) -> bool:
        machine = self._get(node_id)
        machine.expected_exit = True
        with contextlib.suppress(HostFailure):
            if machine.suspended:
                await self.host.call("resume", machine.dom.resume)
            await self.host.call(f"power node {machine.spec.name} down", machine.dom.shutdownFlags,
                                 libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)  # fmt: skip
        try:
            await asyncio.wait_for(machine.ended.wait(), timeout)
            return True
        except TimeoutError:
            log.info("node %s ignored the ACPI power-down for %s s; stopping it", node_id, timeout)
        with contextlib.suppress(HostFailure):
            await self.host.call(f"stop node {machine.spec.name}", machine.dom.destroy)
        await self._wait_ended(machine)
        return False

    async def kill(self, node_id: str) -> None:
        machine = self._get(node_id)
        machine.expected_exit = True
        with contextlib.suppress(HostFailure):
            await self.host.call(f"kill node {machine.spec.name}", machine.dom.destroy)
        await self._wait_ended(machine)

    async def reset(self, node_id: str) -> None:
        machine = self._get(node_id)
        await self.host.call(f"reset node {machine.spec.name}", machine.dom.reset, 0)

    async def suspend(self, node_id: str) -> None:
        machine = self._get(node_id)
        await self.host.call(f"suspend node {machine.spec.name}", machine.dom.suspend)
        machine.suspended = True

    async def resume(self, node_id: str) -> None:
        machine = self._get(node_id)
        await self.host.call(f"resume node {machine.spec.name}", machine.dom.resume)
        machine.suspended = False

    async def screenshot(self, node_id: str) -> bytes:
        machine = self._get(node_id)
        conn = self.host.conn

        def shoot() -> bytes:
            stream = conn.newStream(0)
            machine.dom.screenshot(stream, 0, 0)
            parts: list[bytes] = []
            stream.recvAll(lambda _s, buf, _o: parts.append(buf), None)
            return b"".join(parts)

        ppm = await self.host.call(f"take a screenshot of node {machine.spec.name}", shoot)
        return await asyncio.to_thread(as_png, ppm)

    async def set_link(self, node_id: str, index: int, up: bool) -> None:
        machine = self._get(node_id)
        live = ET.fromstring(await self.host.call("read a domain", machine.dom.XMLDesc, 0))
        for iface in live.iterfind("devices/interface"):
            alias = iface.find("alias")
            if alias is not None and alias.get("name") == f"ua-nic{index}":
                xml = link_state_xml(iface, up)
                await self.host.call(
                    f"set the link of eth{index} of node {machine.spec.name}",
                    machine.dom.updateDeviceFlags, xml, libvirt.VIR_DOMAIN_AFFECT_LIVE,
                )  # fmt: skip
                return
        raise Conflict(f"node {machine.spec.name} has no eth{index}")
