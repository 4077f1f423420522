"""The libvirt node driver: one host's nodes as transient domains, behind ``NodeDriver``.

One driver per host (phase 2 puts a router in front that sends each node to its host's
driver, the local host keeping :class:`virtlab.nodes.qemu.driver.QemuDriver`)::

    driver = await LibvirtDriver.open("h1", "qemu+tls://10.0.0.5/system", accel=Accel.TCG)
    await driver.create_disk(spec, base_qcow2, None)   # base pushed once, overlay on the host
    await driver.start(spec)      # paused; console stream attached; resumed unless start_paused

* **Start** defines nothing: ``createXML(…, START_PAUSED)`` makes a transient domain (a stopped
  node leaves nothing behind on the host), the console stream is attached while the vCPUs are
  halted, then it runs. ``spec.start_paused`` leaves it halted for the service's ``resume``.
* **Ends** come as lifecycle events: the guest powered off, or we stopped/killed it, is
  ``stopped``; anything else (QEMU died, someone destroyed it behind our back) is ``crashed``.
* **Hosts come and go.** When the host stops answering, its nodes are *unknown*
  (:meth:`unknown`; ``on_host_change`` hears it) and nothing is ended; when it answers again
  every node is looked up: a running domain is re-adopted (console re-attached), a missing one
  ended while we could not see it and is reported ``crashed`` (``stopped`` if we had asked).
* Consoles: :class:`~virtlab.hosts.console.ConsoleBridge` at ``spec.paths.serial`` and
  :class:`~virtlab.hosts.vnc.VncBridge` at ``spec.paths.vnc``, so the console service works
  unchanged.
* Checkpoints are internal snapshots in the node's disk volume (:mod:`virtlab.hosts.snapshots`):
  saved by libvirt, resumed by a start with ``spec.loadvm``, listed and deleted whether the
  domain runs or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path, PurePosixPath

import libvirt

from virtlab.errors import Conflict
from virtlab.hosts import snapshots
from virtlab.hosts.connection import HostConnection, HostStatus
from virtlab.hosts.console import ConsoleBridge
from virtlab.hosts.domain import Placement, build_domain_xml, domain_name, link_state_xml
from virtlab.hosts.errors import HostFailure, HostUnreachable
from virtlab.hosts.machine import Machine as _Machine
from virtlab.hosts.machine import ending, evidence
from virtlab.hosts.screens import as_png
from virtlab.hosts.vnc import VncBridge
from virtlab.hosts.volumes import HostStorage
from virtlab.nodes.checkpoints import SavedState
from virtlab.nodes.driver import NodeDriver
from virtlab.nodes.spec import Accel, NodeSpec
from virtlab.nodes.state import NodeState

__all__ = ["HostChangeCallback", "LibvirtDriver"]

log = logging.getLogger("virtlab.hosts")
HostChangeCallback = Callable[[str, bool, list[str]], Awaitable[None]]
"""``(host name, up, node ids)``: the host stopped answering (False) or answers again (True)."""


class LibvirtDriver(NodeDriver):
    kind = "libvirt"

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

    # -- adoption and the host's comings and goings ---------------------------------------------

    async def _lookup(self, spec: NodeSpec) -> tuple[libvirt.virDomain, bool] | None:
        """The node's domain if it runs on the host, and whether it is paused."""
        conn = self.host.conn

        def lookup() -> tuple[libvirt.virDomain, int] | None:
            try:
                dom = conn.lookupByName(domain_name(spec.id))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise
            return dom, dom.state()[0]

        found = await self.host.call(f"look for node {spec.name}", lookup)
        if found is None or found[1] not in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED):
            return None
        return found[0], found[1] == libvirt.VIR_DOMAIN_PAUSED

    async def adopt(self, spec: NodeSpec) -> NodeState | None:
        found = await self._lookup(spec)
        if found is None:
            return None
        machine = _Machine(spec, found[0], suspended=found[1])
        self._machines[spec.id] = machine
        await self._attach(machine)
        return NodeState.SUSPENDED if machine.suspended else NodeState.RUNNING

    def state(self, node_id: str) -> NodeState:
        machine = self._machines.get(node_id)
        if machine is None:
            return NodeState.STOPPED
        return NodeState.SUSPENDED if machine.suspended else NodeState.RUNNING

    def unknown(self, node_id: str) -> bool:
        """Whether the node's host is not answering (its state is then the last one seen)."""
        return node_id in self._machines and self.host.status is not HostStatus.UP

    def on_lifecycle(self, host: HostConnection, domain: str, event: int, detail: int) -> None:
        machine = next((m for m in self._machines.values() if m.name == domain), None)
        verdict = ending(machine, event, detail) if machine is not None else None
        if machine is not None and verdict is not None:
            state, why = verdict
            detail_text = evidence(machine, self.host.name, why) if why else ""
            self._spawn(self._end(machine, state, detail_text))

    def on_host_down(self, host: HostConnection, reason: str) -> None:
        for machine in self._machines.values():
            if machine.console is not None:
                machine.console.detach()
        self._notify(False)

    def on_host_up(self, host: HostConnection) -> None:
        self._spawn(self._readopt())

    async def _readopt(self) -> None:
        for machine in list(self._machines.values()):
            spec = machine.spec
            try:
                state = await self.adopt_again(machine)
            except Exception as exc:
                log.warning("node %s: cannot re-adopt it on host %s: %s", spec.name,
                            self.host.name, exc)  # fmt: skip
                continue
            if state is None:
                how = NodeState.STOPPED if machine.expected_exit else NodeState.CRASHED
                why = "it ended while the host was not answering"
                await self._end(machine, how, evidence(machine, self.host.name, why))
        self._notify(True)

    async def adopt_again(self, machine: _Machine) -> NodeState | None:
        """The host answers again: the same machine, its consoles kept (the hub stays
        connected), on the new connection; None when its domain is gone."""
        found = await self._lookup(machine.spec)
        if found is None:
            return None
        machine.dom, machine.suspended = found
        await self._attach(machine)
        return NodeState.SUSPENDED if machine.suspended else NodeState.RUNNING

    def _notify(self, up: bool) -> None:
        if self.on_host_change is not None:
            self._spawn(self.on_host_change(self.host.name, up, list(self._machines)))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
