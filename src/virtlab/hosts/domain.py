"""A node's libvirt domain XML, built by pure functions from its frozen :class:`NodeSpec`.

The same settings as a local node (:mod:`virtlab.nodes.qemu.argv`), in libvirt's words, and
the same guest-visible hardware: disk controller in PCI slot 4, ``nicN`` in slot 6+N, a VGA
card always, COM1 always, ACPI on (libvirt leaves it off unless asked; a graceful power-down
needs it). Nothing here touches a host: where the disks are on the host and what the host
offers come in as a :class:`Placement`. ``tests/test_libvirt_domain.py`` holds golden XML.

* Disks are volumes of the host's pool: the node's overlay (qcow2) is backed by the base image's
  volume, given as an explicit ``<backingStore>`` so libvirt never probes it. The base (and a
  CD-ROM) carry ``<seclabel model='dac' relabel='no'/>``: a host with Debian's defaults
  (``dynamic_ownership = 1``) would otherwise chown a shared base to ``libvirt-qemu`` and
  never give it back. The base must be readable by the QEMU user as it is (the image push
  makes it mode 0644).
* NICs are UDP tunnels (``<interface type='udp'>``, exactly ``-netdev socket,udp=…,
  localaddr=…``). A NIC without a cable still needs an address pair: it gets a tunnel to a
  port on its own host that nobody listens on (``Placement.sink``), with its link down.
  libvirt 9.0 cannot change a UDP peer on a running domain: a new cable means a restart.
* COM1 is a ``pty`` (the only kind ``virDomainOpenConsole`` serves) with a ``<log>`` file on
  the host that keeps everything the guest printed, whoever was attached.
* VNC listens on the host's management address (a domain's VNC socket can be handed over only
  on a local connection); the server proxies it.
* A node resumed from a checkpoint gets ``-loadvm TAG`` as a ``<qemu:commandline>`` argument,
  as a local node does (:mod:`virtlab.hosts.snapshots`).
"""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import PurePosixPath

from virtlab.errors import InvalidRequest
from virtlab.nodes.qemu.argv import (
    DEFAULT_TCG_CPU,
    DISK_SLOT,
    FIRST_NIC_SLOT,
    check_extra_args,
    checkpoint_args,
    validate_spec,
)
from virtlab.nodes.spec import Accel, DiskBus, NicModel, NicSpec, NodeSpec

__all__ = [
    "METADATA_NS",
    "QEMU_NS",
    "Placement",
    "build_domain_xml",
    "cpu_element",
    "disk_elements",
    "domain_name",
    "graphics_elements",
    "interface_element",
    "link_state_xml",
    "serial_elements",
]

METADATA_NS = "https://virtlab.dev/xmlns/node/1"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
DOMAIN_PREFIX = "virtlab-"

_NIC_MODELS = {
    NicModel.VIRTIO: "virtio",
    NicModel.E1000: "e1000",
    NicModel.RTL8139: "rtl8139",
    NicModel.VMXNET3: "vmxnet3",
}
# (libvirt target bus, first target dev name); the CD-ROM goes on the same family.
_DISK_TARGETS = {
    DiskBus.VIRTIO: ("virtio", "vda"),
    DiskBus.IDE: ("ide", "hda"),
    DiskBus.SATA: ("sata", "sda"),
    DiskBus.SCSI: ("scsi", "sda"),
}
_CDROM_TARGETS = {
    DiskBus.VIRTIO: ("ide", "hdc"),  # the built-in IDE, secondary master, as locally
    DiskBus.IDE: ("ide", "hdc"),
    DiskBus.SATA: ("sata", "sdb"),
    DiskBus.SCSI: ("scsi", "sdb"),
}
_CPU_FEATURE = re.compile(r"([+-])([A-Za-z0-9_.-]+)")


@dataclass(frozen=True)
class Placement:
    """Where a node lands on its host: the host's paths and address, as the pure input.

    ``overlay``, ``base`` and ``cdrom`` are paths on the host (volumes of its pool);
    ``address`` is the host's management address (VNC listens there; tunnels start there);
    ``sink`` a UDP port on the host nobody listens on (where an unplugged NIC sends);
    ``serial_log`` the host-side file that keeps COM1's output.
    """

    overlay: PurePosixPath
    address: str
    serial_log: PurePosixPath
    base: PurePosixPath | None = None
    cdrom: PurePosixPath | None = None
    sink: int = 9  # UDP "discard": nothing listens there on a libvirt host


def domain_name(node_id: str) -> str:
    """The domain's name on its host: stable, derived from the node id alone."""
    return DOMAIN_PREFIX + node_id


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _pci(parent: ET.Element, slot: int) -> None:
    _sub(parent, "address", type="pci", domain="0x0000", bus="0x00", slot=f"{slot:#04x}",
         function="0x0")  # fmt: skip


def _no_relabel(source: ET.Element) -> None:
    _sub(source, "seclabel", model="dac", relabel="no")


# --- builders ---------------------------------------------------------------------------------


def cpu_element(accel: Accel, model: str | None) -> ET.Element:
    """``host-passthrough`` under KVM without a model; else the model (``qemu64`` under TCG),
    with ``+feature`` / ``-feature`` as required / disabled features."""
    if model is None and accel is Accel.KVM:
        return ET.Element("cpu", mode="host-passthrough", check="none", migratable="on")
    name, *features = (model or DEFAULT_TCG_CPU).split(",")
    cpu = ET.Element("cpu", mode="custom", match="exact", check="none")
    _sub(cpu, "model", name, fallback="forbid")
    for feature in features:
        found = _CPU_FEATURE.fullmatch(feature)
        if found is None:
            raise InvalidRequest(
                f"cpu model {model!r}: {feature!r} cannot be said to libvirt; use "
                "+feature or -feature (properties like x=y are for local nodes only)"
            )
        policy = "require" if found[1] == "+" else "disable"
        _sub(cpu, "feature", policy=policy, name=found[2])
    return cpu


def _q35(machine: str) -> bool:
    return machine == "q35" or machine.startswith("pc-q35-")


def disk_elements(spec: NodeSpec, place: Placement) -> list[ET.Element]:
    """The overlay (backed by the base volume), a controller if the bus needs one, the
    CD-ROM: boot order CD-ROM first, then the disk, as locally. q35 has no IDE bus: what is
    IDE on i440fx goes on q35's built-in AHCI (as QEMU's ``ide.N`` does there)."""
    bus = DiskBus(spec.disk_bus)
    q35 = _q35(spec.machine)
    elements: list[ET.Element] = []
    if bus is DiskBus.SCSI:
        ctl = ET.Element("controller", type="scsi", index="0", model="virtio-scsi")
        _pci(ctl, DISK_SLOT)
        elements.append(ctl)
    elif bus is DiskBus.SATA and not q35:
        ctl = ET.Element("controller", type="sata", index="0")
        _pci(ctl, DISK_SLOT)
        elements.append(ctl)
    disk = ET.Element("disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2", discard="unmap")
    _sub(disk, "source", file=str(place.overlay))
    if place.base is not None:
        backing = _sub(disk, "backingStore", type="file")
        _sub(backing, "format", type="qcow2")
        _no_relabel(_sub(backing, "source", file=str(place.base)))
        _sub(backing, "backingStore")
    else:
        _sub(disk, "backingStore")
    target_bus, dev = _DISK_TARGETS[bus]
    if q35 and target_bus == "ide":
        target_bus, dev = "sata", "sda"
    _sub(disk, "target", dev=dev, bus=target_bus)
    _sub(disk, "alias", name="ua-hd0")
    _sub(disk, "boot", order="2" if place.cdrom is not None else "1")
    if bus is DiskBus.VIRTIO:
        _pci(disk, DISK_SLOT)
    elements.append(disk)
    if place.cdrom is not None:
        cd = ET.Element("disk", type="file", device="cdrom")
        _sub(cd, "driver", name="qemu", type="raw")
        _no_relabel(_sub(cd, "source", file=str(place.cdrom)))
        target_bus, dev = _CDROM_TARGETS[bus]
        if q35 and target_bus == "ide":
            target_bus, dev = "sata", "sdb"
        _sub(cd, "target", dev=dev, bus=target_bus)
        _sub(cd, "readonly")
        _sub(cd, "alias", name="ua-cd0")
        _sub(cd, "boot", order="1")
        elements.append(cd)
    return elements


def interface_element(nic: NicSpec, place: Placement) -> ET.Element:
    """One UDP-tunnel NIC in its fixed PCI slot; an unplugged one sends to the sink, link down."""
    if nic.user is not None:
        raise InvalidRequest(
            f"eth{nic.index}: user-mode networking (NAT, management) is for nodes on the "
            "server's own host; give a node on a libvirt host a link instead"
        )
    iface = ET.Element("interface", type="udp")
    _sub(iface, "mac", address=nic.mac.lower())
    if nic.tunnel is not None:
        source = _sub(iface, "source", address=nic.tunnel.remote_host,
                      port=str(nic.tunnel.remote_port))  # fmt: skip
        _sub(source, "local", address=nic.tunnel.local_host, port=str(nic.tunnel.local_port))
    else:
        source = _sub(iface, "source", address=place.address, port=str(place.sink))
        _sub(source, "local", address=place.address, port="0")
    _sub(iface, "model", type=_NIC_MODELS[NicModel(nic.model)])
    _sub(iface, "alias", name=f"ua-nic{nic.index}")
    _sub(iface, "link", state="up" if nic.tunnel is not None else "down")
    _pci(iface, FIRST_NIC_SLOT + nic.index)
    return iface


def serial_elements(spec: NodeSpec, place: Placement) -> list[ET.Element]:
    """COM1 on a pty with a host-side log (or a null backend: the port still exists)."""
    serial = ET.Element("serial", type="pty" if spec.serial else "null")
    if spec.serial:
        _sub(serial, "log", file=str(place.serial_log), append="on")
    _sub(serial, "target", type="isa-serial", port="0")
    console = ET.Element("console", type="pty" if spec.serial else "null")
    _sub(console, "target", type="serial", port="0")
    return [serial, console]


def graphics_elements(spec: NodeSpec, place: Placement) -> list[ET.Element]:
    """Always a VGA card; VNC on the host's address, shared by force, when enabled."""
    elements = []
    if spec.vnc:
        gfx = ET.Element("graphics", type="vnc", port="-1", autoport="yes",
                         listen=place.address, sharePolicy="force-shared")  # fmt: skip
        _sub(gfx, "listen", type="address", address=place.address)
        elements.append(gfx)
    video = ET.Element("video")
    _sub(video, "model", type="vga", vram="16384", heads="1", primary="yes")
    elements.append(video)
    return elements


def _metadata(spec: NodeSpec) -> ET.Element:
    meta = ET.Element("metadata")
    ET.SubElement(meta, f"{{{METADATA_NS}}}node", id=spec.id, name=spec.name)
    return meta


def build_domain_xml(spec: NodeSpec, place: Placement) -> str:
    """The whole domain for ``spec`` at ``place``; raises :class:`InvalidRequest` on a bad spec."""
    validate_spec(spec)
    extra = [*check_extra_args(spec.extra_args), *checkpoint_args(spec)]
    accel = Accel(spec.accel)
    dom = ET.Element("domain", type="kvm" if accel is Accel.KVM else "qemu")
    _sub(dom, "name", domain_name(spec.id))
    if spec.uuid is not None:
        _sub(dom, "uuid", str(uuid.UUID(spec.uuid)))
    _sub(dom, "title", spec.name)
    dom.append(_metadata(spec))
    _sub(dom, "memory", str(spec.ram_mb), unit="MiB")
    _sub(dom, "vcpu", str(spec.cpus), placement="static")
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine=spec.machine)
    features = _sub(dom, "features")
    _sub(features, "acpi")
    dom.append(cpu_element(accel, spec.cpu_model))
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    devices = _sub(dom, "devices")
    devices.extend(disk_elements(spec, place))
    for nic in sorted(spec.nics, key=lambda n: n.index):
        devices.append(interface_element(nic, place))
    devices.extend(serial_elements(spec, place))
    devices.extend(graphics_elements(spec, place))
    _sub(devices, "controller", type="usb", index="0", model="none")
    _sub(devices, "memballoon", model="none")
    if extra:
        cmdline = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
        for arg in extra:
            ET.SubElement(cmdline, f"{{{QEMU_NS}}}arg", value=arg)
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode")


def link_state_xml(live_interface: ET.Element, up: bool) -> str:
    """The live ``<interface>`` element with its ``<link state>`` set, for
    ``updateDeviceFlags`` (which wants the device as it is, changed only there)."""
    iface = ET.fromstring(ET.tostring(live_interface))
    link = iface.find("link")
    if link is None:
        link = ET.SubElement(iface, "link")
    link.set("state", "up" if up else "down")
    return ET.tostring(iface, encoding="unicode")


ET.register_namespace("virtlab", METADATA_NS)
ET.register_namespace("qemu", QEMU_NS)
