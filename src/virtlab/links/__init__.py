"""Links: cables between node NICs, and the relay that captures and impairs one.

A plain link is two symlinks (:mod:`virtlab.links.wiring`): QEMU sends each frame to its NIC's
``nicN.peer`` path, which points straight at the other NIC's socket. A captured or impaired
link points both ends at a :class:`Relay` instead (:mod:`virtlab.links.relay`), which forwards
frames both ways through :class:`Impairment` stages and writes pcap (:mod:`virtlab.links.pcap`).
Switching between the two, or unplugging, is a symlink swap while both QEMUs run. A relay's end
may also be a :class:`UdpEndpoint` (:mod:`virtlab.links.ends`): a node on a libvirt host, whose
UDP tunnel then leads to the server instead of straight to the other host.
"""

from virtlab.links.ends import UdpEndpoint
from virtlab.links.impairment import Impairment
from virtlab.links.pcap import PcapFile, PcapStream, Subscription
from virtlab.links.relay import Direction, DirectionCounters, Relay
from virtlab.links.wiring import (
    Endpoint,
    connect_direct,
    connect_via,
    disconnect,
    peer_target,
    plug,
    unplug,
)

__all__ = [
    "Direction",
    "DirectionCounters",
    "Endpoint",
    "Impairment",
    "PcapFile",
    "PcapStream",
    "Relay",
    "Subscription",
    "UdpEndpoint",
    "connect_direct",
    "connect_via",
    "disconnect",
    "peer_target",
    "plug",
    "unplug",
]
