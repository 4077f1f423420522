"""Links: cables between node NICs, and the relay that captures and impairs one.

A plain link is two symlinks (:mod:`virtlab.links.wiring`): QEMU sends each frame to its NIC's
``nicN.peer`` path, which points straight at the other NIC's socket. A captured or impaired
link points both ends at a :class:`Relay` instead (:mod:`virtlab.links.relay`), which forwards
frames both ways through :class:`Impairment` stages and writes pcap (:mod:`virtlab.links.pcap`).
Switching between the two, or unplugging, is a symlink swap while both QEMUs run.
"""

from virtlab.links.impairment import Impairment
from virtlab.links.pcap import PcapFile, PcapStream, Subscription
from virtlab.links.relay import Direction, DirectionCounters, Relay
from virtlab.links.wiring import Endpoint, connect_direct, connect_via, disconnect, peer_target

__all__ = [
    "Direction",
    "DirectionCounters",
    "Endpoint",
    "Impairment",
    "PcapFile",
    "PcapStream",
    "Relay",
    "Subscription",
    "connect_direct",
    "connect_via",
    "disconnect",
    "peer_target",
]
