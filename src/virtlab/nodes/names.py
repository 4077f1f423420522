"""What a node is called: its name (checked) and its NICs' MAC addresses (derived, stable).

Both are pure functions. A node name ends up in QEMU's ``-name``, in log lines and in the
CLI, never in a path (node directories are named by id), but it is checked all the same:
nothing a user types reaches a command line unchecked.
"""

from __future__ import annotations

import hashlib
import re

from virtlab.errors import InvalidRequest
from virtlab.names import LEGACY_LABEL, NODE

__all__ = [
    "MAC_RE", "NAME_RULE", "stable_mac", "validate_existing_name", "validate_mac", "validate_name",
]  # fmt: skip

NAME_RULE = NODE.rule  # the rule lives in virtlab.names, with every other kind of name
MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_QEMU_OUI = "52:54:00"


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid node name, else raise :class:`InvalidRequest`."""
    return NODE.check(name)


def validate_existing_name(name: str) -> str:
    """``name`` if a node may carry it: the rule now, or the looser one of nodes made before
    it (see :data:`virtlab.names.LEGACY_LABEL`); QEMU's ``-name`` takes either safely."""
    if isinstance(name, str) and re.fullmatch(LEGACY_LABEL, name):
        return name
    return NODE.check(name)


def stable_mac(node_id: str, index: int) -> str:
    """The MAC address of NIC ``index`` of node ``node_id``: the same on every call.

    ``52:54:00`` (QEMU's prefix: locally administered, unicast) followed by three bytes of
    SHA-256 of the node id and the index. With 24 bits, two NICs among a few hundred share an
    address with a probability well under 1 %; a lab that wants certainty sets MACs itself.
    """
    if not node_id:
        raise InvalidRequest("a MAC address needs a node id")
    if not isinstance(index, int) or index < 0:
        raise InvalidRequest(f"NIC index must be a non-negative integer, not {index!r}")
    digest = hashlib.sha256(f"virtlab-mac\0{node_id}\0{index}".encode()).digest()
    return _QEMU_OUI + "".join(f":{b:02x}" for b in digest[:3])


def validate_mac(mac: str) -> str:
    """Return ``mac`` in lower case if it is a unicast ``xx:xx:xx:xx:xx:xx`` address."""
    low = mac.lower() if isinstance(mac, str) else ""
    if not MAC_RE.fullmatch(low):
        raise InvalidRequest(
            f"invalid MAC address {mac!r}: expected six hex pairs like 52:54:00:12:34:56"
        )
    if int(low[:2], 16) & 1:
        raise InvalidRequest(f"invalid MAC address {mac!r}: a multicast address cannot be a NIC's")
    return low
