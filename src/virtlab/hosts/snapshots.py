"""Checkpoints of nodes on a libvirt host: QEMU internal snapshots inside the node's disk volume.

The same thing as a local checkpoint (the guest's memory, its devices and the disk's blocks in
the node's qcow2 overlay), made and used through libvirt, nothing of virtlab's on the host:

* **Save**: ``virDomainSnapshotCreateXML`` with memory and disk ``internal``, and
  ``NO_METADATA``: the domain is transient, so libvirt's own record of the snapshot would go
  with it, while the snapshot lives on in the volume, as a local one lives in the node's qcow2.
  libvirt pauses a running guest for the save and lets it run after; a paused one stays paused.
  QEMU's ``savevm`` replaces a snapshot of the same name, so a tag the disk holds is refused
  first.
* **Resume**: the domain starts with ``-loadvm TAG`` (``<qemu:commandline>``, built by
  :mod:`virtlab.hosts.domain`), as a local node does; QEMU fails the start, saying why, for a
  checkpoint it cannot load, and nothing runs.
* **List**: a running domain's monitor answers ``query-block``; a stopped node's checkpoints
  are read from the volume's qcow2 snapshot table, fetched by ``virStorageVolDownload`` with an
  offset and a length (the header, then the table: a few KiB).
* **Delete**: HMP ``delvm`` on the running domain; for a stopped node, on a short-lived paused
  domain with nothing but the disk (the driver makes it), destroyed at once.

The monitor commands go through ``virDomainQemuMonitorCommand`` (libvirt marks such a domain
"tainted" in its log; nothing else changes).
"""

from __future__ import annotations

import json
import struct
import time
import xml.etree.ElementTree as ET

import libvirt
import libvirt_qemu

from virtlab.hosts.connection import HostConnection
from virtlab.hosts.connection import libvirt_version as _version
from virtlab.hosts.errors import HostFailure
from virtlab.nodes.checkpoints import SavedState

__all__ = [
    "delete", "delete_stopped", "parse_snapshot_table", "running_snapshots", "save",
    "volume_snapshots",
]  # fmt: skip

_HMP = libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
_DISK = "/machine/peripheral/ua-hd0"  # the node's disk: alias ua-hd0 (domain.py)
_SNAPSHOT_XML = (
    "<domainsnapshot><name>{tag}</name><memory snapshot='internal'/>"
    "<disks><disk name='{dev}' snapshot='internal'/></disks></domainsnapshot>"
)
_HEADER = struct.Struct(">4sI")  # magic, version
_TABLE = struct.Struct(">IQ")  # nb_snapshots, snapshots_offset (at byte 60)
_ENTRY = struct.Struct(">QIHHIIQII")  # l1 offset, l1 size, id len, name len, date s, date ns,
# vm clock, vm_state_size, extra_data_size
_MAX_TABLE = 4 << 20


def _monitor(dom: libvirt.virDomain, command: str, flags: int = 0) -> str:
    return str(libvirt_qemu.qemuMonitorCommand(dom, command, flags))


def _running_blocking(dom: libvirt.virDomain) -> dict[str, int]:
    reply = json.loads(_monitor(dom, json.dumps({"execute": "query-block"})))
    for block in reply.get("return", []):
        if str(block.get("qdev", "")).startswith(_DISK):
            image = (block.get("inserted") or {}).get("image") or {}
            return {str(s["name"]): int(s.get("vm-state-size", 0))
                    for s in image.get("snapshots", [])}  # fmt: skip
    return {}


async def running_snapshots(
    host: HostConnection, dom: libvirt.virDomain, node: str
) -> dict[str, int]:
    """The checkpoints in a running domain's disk: tag -> bytes of machine state."""
    return await host.call(f"list the checkpoints of node {node}", _running_blocking, dom)


async def save(host: HostConnection, dom: libvirt.virDomain, node: str, tag: str) -> SavedState:
    """Save the domain as checkpoint ``tag`` in its disk (see the module's doc)."""
    if tag in await running_snapshots(host, dom, node):
        raise HostFailure(
            f"checkpoint {tag} already exists in the disk of node {node} on host {host.name}; "
            "choose another tag", host.name,
        )  # fmt: skip
    live = ET.fromstring(await host.call("read a domain", dom.XMLDesc, 0))
    dev = live.find("devices/disk[@device='disk']/target")
    xml = _SNAPSHOT_XML.format(tag=tag, dev=dev.get("dev") if dev is not None else "vda")
    started = time.monotonic()
    await host.call(f"save checkpoint {tag} of node {node}", dom.snapshotCreateXML, xml,
                    libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA)  # fmt: skip
    seconds = time.monotonic() - started
    size = (await running_snapshots(host, dom, node)).get(tag)
    if size is None:
        raise HostFailure(
            f"host {host.name} said checkpoint {tag} of node {node} was saved, but its disk does "
            "not hold it; try again, and check the host's libvirtd log if it happens twice",
            host.name,
        )  # fmt: skip
    qemu = _version(await host.call("read the QEMU version", host.conn.getVersion))
    machine = live.find("os/type")
    accel = "kvm" if live.get("type") == "kvm" else "tcg"
    return SavedState(tag, size, qemu, machine.get("machine", "") if machine is not None else "",
                      seconds, accel)  # fmt: skip


async def delete(host: HostConnection, dom: libvirt.virDomain, node: str, tag: str) -> None:
    """Delete checkpoint ``tag`` from the disk of a domain that runs (paused or not)."""
    if tag not in await running_snapshots(host, dom, node):
        raise HostFailure(
            f"the disk of node {node} on host {host.name} has no checkpoint {tag} to delete",
            host.name,
        )  # fmt: skip
    said = await host.call(f"delete checkpoint {tag} of node {node}", _monitor, dom,
                           f"delvm {tag}", _HMP)  # fmt: skip
    if said.strip() or tag in await running_snapshots(host, dom, node):
        raise HostFailure(
            f"QEMU on host {host.name} could not delete checkpoint {tag} of node {node}: "
            f"{said.strip() or 'it is still there'}", host.name,
        )  # fmt: skip


async def delete_stopped(host: HostConnection, xml: str, node: str, tag: str) -> None:
    """Delete checkpoint ``tag`` from a stopped node's disk: on a domain ``xml`` (nothing but
    the disk, a name of its own) started paused for this alone, and destroyed after."""
    name = ET.fromstring(xml).findtext("name") or ""
    conn = host.conn

    def create() -> libvirt.virDomain:
        try:  # one a server that died half-way left behind
            conn.lookupByName(name).destroy()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
        return conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED)

    dom = await host.call(f"open the disk of node {node} to delete checkpoint {tag}", create)
    try:
        await delete(host, dom, node, tag)
    finally:
        try:
            await host.call(f"close the disk of node {node}", dom.destroy)
        except HostFailure as exc:
            if exc.code != libvirt.VIR_ERR_NO_DOMAIN:
                raise


# -- a stopped node's disk: its snapshot table, read through a download stream --------------------


def parse_snapshot_table(data: bytes, count: int) -> dict[str, int] | None:
    """``count`` qcow2 snapshot entries from ``data`` (the table's first bytes): tag -> bytes
    of machine state; None when ``data`` ends before the last entry does."""
    found, at = {}, 0
    for _ in range(count):
        if at + _ENTRY.size > len(data):
            return None
        _l1, _l1_size, id_len, name_len, _s, _ns, _clock, vm_state, extra = _ENTRY.unpack_from(
            data, at
        )
        end = at + _ENTRY.size + extra + id_len + name_len
        if end > len(data):
            return None
        if extra >= 8:  # vm_state_size_large
            vm_state = struct.unpack_from(">Q", data, at + _ENTRY.size)[0]
        start = at + _ENTRY.size + extra + id_len
        found[data[start : start + name_len].decode(errors="replace")] = int(vm_state)
        at = (end + 7) & ~7
    return found


def _read(host: HostConnection, vol: libvirt.virStorageVol, offset: int, length: int) -> bytes:
    parts: list[bytes] = []
    stream = host.conn.newStream(0)
    vol.download(stream, offset, length, 0)
    stream.recvAll(lambda _s, buf, _o: parts.append(buf), None)
    stream.finish()
    return b"".join(parts)


def _volume_blocking(host: HostConnection, vol: libvirt.virStorageVol) -> dict[str, int]:
    header = _read(host, vol, 0, 72)
    if len(header) < 72 or _HEADER.unpack_from(header)[0] != b"QFI\xfb":
        return {}
    count, offset = _TABLE.unpack_from(header, 60)
    if count == 0:
        return {}
    length = 4096 * count
    while True:
        found = parse_snapshot_table(_read(host, vol, offset, length), count)
        if found is not None:
            return found
        if length >= _MAX_TABLE:
            raise ValueError(f"its snapshot table is larger than {_MAX_TABLE} bytes")
        length *= 2


async def volume_snapshots(
    host: HostConnection, vol: libvirt.virStorageVol, node: str
) -> dict[str, int]:
    """The checkpoints in a stopped node's disk volume: tag -> bytes of machine state."""
    try:
        return await host.call(f"read the checkpoints of node {node}", _volume_blocking, host, vol)
    except ValueError as exc:
        raise HostFailure(f"the disk of node {node} on host {host.name} cannot be read: {exc}",
                          host.name) from exc  # fmt: skip
