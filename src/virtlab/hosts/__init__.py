"""Nodes on libvirt hosts: machines elsewhere, behind the same node-driver interface.

Nothing of virtlab's runs on a host: its libvirt daemon (Debian's ``libvirt-daemon``,
``libvirt-daemon-driver-qemu``, ``qemu-system-x86``, ``qemu-utils``) is reached over a remote
URI (``qemu+tls://``, ``qemu+ssh://``, ``qemu+tcp://`` for tests) through ``libvirt-python``.

| module | owns |
| --- | --- |
| ``connection`` | a kept-open connection per host: events, keepalive, reconnecting, facts |
| ``domain`` | pure functions: ``NodeSpec`` + where it lands → domain XML (golden tests) |
| ``volumes`` | the ``virtlab`` pool: bases (pushed once, sealed by sha256), node overlays |
| ``snapshots`` | checkpoints: internal snapshots in a node's disk volume, saved, listed, deleted |
| ``driver`` | ``LibvirtDriver``: connecting, facts, disks, checkpoints; built on the two below |
| ``lifecycle`` | start paused → console → run; stop, kill and the other actions on a domain |
| ``adoption`` | ends by events; re-adoption; the host's comings and goings |
| ``machine`` | what the driver keeps per node; how a domain's end is read |
| ``console`` | the console stream served on the node's local ``serial.sock`` for the hub |
| ``vnc`` | the host's VNC port served on the node's local ``vnc.sock`` |
| ``screens`` | a screenshot as PNG |
| ``errors`` | ``HostUnreachable``, ``HostFailure`` |

Import this package only where ``libvirt-python`` is installed (``pip install virtlab[libvirt]``).
"""

from virtlab.hosts.connection import HostConnection, HostInfo, HostStatus
from virtlab.hosts.driver import LibvirtDriver
from virtlab.hosts.errors import HostFailure, HostUnreachable
from virtlab.hosts.volumes import BaseVolume, HostStorage

__all__ = [
    "BaseVolume",
    "HostConnection",
    "HostFailure",
    "HostInfo",
    "HostStatus",
    "HostStorage",
    "HostUnreachable",
    "LibvirtDriver",
]
