"""A node's libvirt domain XML: golden documents for a few specs, the parts, and refusals.

The goldens are written out in full on purpose: a change of the domain shows up here as a diff
a reviewer can read. Real domains are started from these builders in
``tests/test_libvirt_driver_contract.py`` and ``tests/test_libvirt_hosts.py``.
"""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
import zlib
from dataclasses import replace
from pathlib import Path, PurePosixPath

import pytest

from virtlab.errors import InvalidRequest, ToolFailure
from virtlab.hosts.domain import (
    Placement,
    build_domain_xml,
    cpu_element,
    disk_elements,
    domain_name,
    interface_element,
    link_state_xml,
)
from virtlab.hosts.screens import as_png, ppm_to_png
from virtlab.nodes.spec import (
    Accel,
    DiskBus,
    Forward,
    NicModel,
    NicSpec,
    NodeSpec,
    RunPaths,
    UdpTunnel,
    UserNet,
)

PLACE = Placement(
    overlay=PurePosixPath("/var/lib/libvirt/virtlab/node-0a1b.qcow2"),
    address="192.0.2.1",
    serial_log=PurePosixPath("/var/log/libvirt/qemu/virtlab-0a1b-serial.log"),
    base=PurePosixPath("/var/lib/libvirt/virtlab/base-ab.qcow2"),
)
ISO = PurePosixPath("/var/lib/libvirt/virtlab/base-cd.img")


def spec(**changes: object) -> NodeSpec:
    base = NodeSpec(
        id="0a1b", name="r1", paths=RunPaths(Path("/var/lib/virtlab/nodes/0a1b")),
        uuid="6f1c2d3e-0000-4000-8000-000000000001",
    )  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


def _xml(element: ET.Element) -> str:
    return ET.tostring(element, encoding="unicode")


GOLDEN_MINIMAL = """\
<domain xmlns:virtlab="https://virtlab.dev/xmlns/node/1" type="qemu">
  <name>virtlab-0a1b</name>
  <uuid>6f1c2d3e-0000-4000-8000-000000000001</uuid>
  <title>r1</title>
  <metadata>
    <virtlab:node id="0a1b" name="r1" />
  </metadata>
  <memory unit="MiB">256</memory>
  <vcpu placement="static">1</vcpu>
  <os>
    <type arch="x86_64" machine="pc">hvm</type>
  </os>
  <features>
    <acpi />
  </features>
  <cpu mode="custom" match="exact" check="none">
    <model fallback="forbid">qemu64</model>
  </cpu>
  <clock offset="utc" />
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type="file" device="disk">
      <driver name="qemu" type="qcow2" discard="unmap" />
      <source file="/var/lib/libvirt/virtlab/node-0a1b.qcow2" />
      <backingStore type="file">
        <format type="qcow2" />
        <source file="/var/lib/libvirt/virtlab/base-ab.qcow2">
          <seclabel model="dac" relabel="no" />
        </source>
        <backingStore />
      </backingStore>
      <target dev="vda" bus="virtio" />
      <alias name="ua-hd0" />
      <boot order="1" />
      <address type="pci" domain="0x0000" bus="0x00" slot="0x04" function="0x0" />
    </disk>
    <serial type="pty">
      <log file="/var/log/libvirt/qemu/virtlab-0a1b-serial.log" append="on" />
      <target type="isa-serial" port="0" />
    </serial>
    <console type="pty">
      <target type="serial" port="0" />
    </console>
    <graphics type="vnc" port="-1" autoport="yes" listen="192.0.2.1" sharePolicy="force-shared">
      <listen type="address" address="192.0.2.1" />
    </graphics>
    <video>
      <model type="vga" vram="16384" heads="1" primary="yes" />
    </video>
    <controller type="usb" index="0" model="none" />
    <memballoon model="none" />
  </devices>
</domain>"""

GOLDEN_KVM_SATA_CDROM_HEADLESS = """\
<domain xmlns:virtlab="https://virtlab.dev/xmlns/node/1" type="kvm">
  <name>virtlab-0a1b</name>
  <uuid>6f1c2d3e-0000-4000-8000-000000000001</uuid>
  <title>r1</title>
  <metadata>
    <virtlab:node id="0a1b" name="r1" />
  </metadata>
  <memory unit="MiB">512</memory>
  <vcpu placement="static">2</vcpu>
  <os>
    <type arch="x86_64" machine="pc">hvm</type>
  </os>
  <features>
    <acpi />
  </features>
  <cpu mode="host-passthrough" check="none" migratable="on" />
  <clock offset="utc" />
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <controller type="sata" index="0">
      <address type="pci" domain="0x0000" bus="0x00" slot="0x04" function="0x0" />
    </controller>
    <disk type="file" device="disk">
      <driver name="qemu" type="qcow2" discard="unmap" />
      <source file="/var/lib/libvirt/virtlab/node-0a1b.qcow2" />
      <backingStore />
      <target dev="sda" bus="sata" />
      <alias name="ua-hd0" />
      <boot order="2" />
    </disk>
    <disk type="file" device="cdrom">
      <driver name="qemu" type="raw" />
      <source file="/var/lib/libvirt/virtlab/base-cd.img">
        <seclabel model="dac" relabel="no" />
      </source>
      <target dev="sdb" bus="sata" />
      <readonly />
      <alias name="ua-cd0" />
      <boot order="1" />
    </disk>
    <serial type="null">
      <target type="isa-serial" port="0" />
    </serial>
    <console type="null">
      <target type="serial" port="0" />
    </console>
    <video>
      <model type="vga" vram="16384" heads="1" primary="yes" />
    </video>
    <controller type="usb" index="0" model="none" />
    <memballoon model="none" />
  </devices>
</domain>"""


def test_golden_minimal_tcg_virtio() -> None:
    assert build_domain_xml(spec(), PLACE) == GOLDEN_MINIMAL.rstrip("\n")


def test_golden_kvm_sata_cdrom_blank_disk_without_consoles() -> None:
    headless = spec(accel=Accel.KVM, cpus=2, ram_mb=512, disk_bus=DiskBus.SATA, serial=False,
                    vnc=False)  # fmt: skip
    place = replace(PLACE, base=None, cdrom=ISO)
    assert build_domain_xml(headless, place) == GOLDEN_KVM_SATA_CDROM_HEADLESS.rstrip("\n")


def test_a_udp_tunnel_is_exactly_the_links_addresses() -> None:
    nic = NicSpec(0, NicModel.VIRTIO, "52:54:00:00:0A:01",
                  UdpTunnel("192.0.2.1", 40000, "198.51.100.7", 40001))  # fmt: skip
    assert _xml(interface_element(nic, PLACE)) == (
        '<interface type="udp"><mac address="52:54:00:00:0a:01" />'
        '<source address="198.51.100.7" port="40001">'
        '<local address="192.0.2.1" port="40000" /></source>'
        '<model type="virtio" /><alias name="ua-nic0" /><link state="up" />'
        '<address type="pci" domain="0x0000" bus="0x00" slot="0x06" function="0x0" />'
        "</interface>"
    )


def test_an_unplugged_nic_sends_to_the_hosts_sink_with_its_link_down() -> None:
    nic = NicSpec(3, NicModel.E1000, "52:54:00:00:0a:04")
    assert _xml(interface_element(nic, replace(PLACE, sink=7))) == (
        '<interface type="udp"><mac address="52:54:00:00:0a:04" />'
        '<source address="192.0.2.1" port="7"><local address="192.0.2.1" port="0" /></source>'
        '<model type="e1000" /><alias name="ua-nic3" /><link state="down" />'
        '<address type="pci" domain="0x0000" bus="0x00" slot="0x09" function="0x0" />'
        "</interface>"
    )


@pytest.mark.parametrize(
    ("bus", "disk_target", "cd_target", "controller"),
    [
        (DiskBus.VIRTIO, ("vda", "virtio"), ("hdc", "ide"), None),
        (DiskBus.IDE, ("hda", "ide"), ("hdc", "ide"), None),
        (DiskBus.SATA, ("sda", "sata"), ("sdb", "sata"), "sata"),
        (DiskBus.SCSI, ("sda", "scsi"), ("sdb", "scsi"), "scsi"),
    ],
)
def test_every_disk_bus(bus: DiskBus, disk_target: tuple, cd_target: tuple,
                        controller: str | None) -> None:  # fmt: skip
    elements = disk_elements(spec(disk_bus=bus), replace(PLACE, cdrom=ISO))
    kinds = [(e.tag, e.get("type"), e.get("device")) for e in elements]
    assert kinds[-2:] == [("disk", "file", "disk"), ("disk", "file", "cdrom")]
    disk, cd = elements[-2], elements[-1]
    assert (disk.find("target").get("dev"), disk.find("target").get("bus")) == disk_target
    assert (cd.find("target").get("dev"), cd.find("target").get("bus")) == cd_target
    assert [e.get("type") for e in elements[:-2]] == ([controller] if controller else [])
    assert (disk.find("boot").get("order"), cd.find("boot").get("order")) == ("2", "1")


def test_q35_has_no_ide_bus() -> None:
    elements = disk_elements(spec(machine="q35", disk_bus=DiskBus.IDE), replace(PLACE, cdrom=ISO))
    assert [e.find("target").get("bus") for e in elements] == ["sata", "sata"]


def test_the_base_and_the_cdrom_are_never_relabelled() -> None:
    disk, cd = disk_elements(spec(), replace(PLACE, cdrom=ISO))
    for source in (disk.find("backingStore/source"), cd.find("source")):
        assert source is not None
        assert source.find("seclabel").attrib == {"model": "dac", "relabel": "no"}
    assert disk.find("source").find("seclabel") is None, "the node's own overlay is relabelled"


def test_cpu_models_and_features() -> None:
    assert _xml(cpu_element(Accel.TCG, None)) == (
        '<cpu mode="custom" match="exact" check="none">'
        '<model fallback="forbid">qemu64</model></cpu>'
    )
    assert _xml(cpu_element(Accel.KVM, "Haswell,+avx2,-hle")) == (
        '<cpu mode="custom" match="exact" check="none"><model fallback="forbid">Haswell</model>'
        '<feature policy="require" name="avx2" /><feature policy="disable" name="hle" /></cpu>'
    )
    with pytest.raises(InvalidRequest, match="properties like x=y"):
        cpu_element(Accel.TCG, "qemu64,level=13")


def test_user_mode_networking_is_refused_on_a_host() -> None:
    nic = NicSpec(0, NicModel.VIRTIO, "52:54:00:00:0a:01",
                  user=UserNet((Forward("tcp", 2222, 22),)))  # fmt: skip
    with pytest.raises(InvalidRequest, match="server's own host"):
        build_domain_xml(spec(nics=(nic,)), PLACE)


def test_bad_specs_are_refused_as_for_local_nodes() -> None:
    with pytest.raises(InvalidRequest, match="ram_mb"):
        build_domain_xml(spec(ram_mb=1), PLACE)
    with pytest.raises(InvalidRequest):
        build_domain_xml(spec(extra_args=("-drive", "file=/etc/shadow")), PLACE)


def test_allowed_extra_arguments_go_to_qemu_commandline() -> None:
    root = ET.fromstring(build_domain_xml(spec(extra_args=("-k", "de")), PLACE))
    ns = "{http://libvirt.org/schemas/domain/qemu/1.0}"
    assert [a.get("value") for a in root.iter(f"{ns}arg")] == ["-k", "de"]


def test_domain_names_and_the_link_state_update() -> None:
    assert domain_name("0a1b") == "virtlab-0a1b"
    live = ET.fromstring(
        '<interface type="udp"><mac address="52:54:00:00:0a:01"/><alias name="ua-nic0"/>'
        '<link state="up"/></interface>'
    )
    down = ET.fromstring(link_state_xml(live, False))
    assert down.find("link").get("state") == "down"
    assert down.find("mac").get("address") == "52:54:00:00:0a:01", "the rest as it was"
    assert live.find("link").get("state") == "up", "the input is not changed"
    no_link = ET.fromstring('<interface type="udp"><mac address="52:54:00:00:0a:01"/></interface>')
    assert ET.fromstring(link_state_xml(no_link, True)).find("link").get("state") == "up"


def test_screenshots_become_png() -> None:
    ppm = b"P6\n# a comment\n2 1\n255\n" + bytes([255, 0, 0, 0, 0, 255])
    png = ppm_to_png(ppm)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (2, 1)
    idat = png.index(b"IDAT")
    length = struct.unpack(">I", png[idat - 4 : idat])[0]
    assert zlib.decompress(png[idat + 4 : idat + 4 + length]) == b"\0" + ppm[-6:]
    assert as_png(png) is png
    with pytest.raises(ToolFailure, match="not an 8-bit PPM"):
        ppm_to_png(b"GIF89a")
