"""The builtin kinds of node, each saying what it is and which settings it takes.

A kind the file defines under ``topology.kinds`` with a new name is a plain node (``linux``)
with settings of its own; a ``topology.kinds`` entry named after a builtin kind sets that kind's
settings (as containerlab's ``kinds`` section does).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from virtlab.topology.specs import NODE_SETTINGS

__all__ = ["BUILTIN_KINDS", "DEFAULT_KIND", "BuiltinKind"]


@dataclass(frozen=True)
class BuiltinKind:
    name: str
    description: str
    machine: bool  # a QEMU machine on an image, or not
    settings: frozenset[str]  # the settings a node or kind of this kind may set
    from_defaults: frozenset[str]  # the settings it takes from topology.defaults
    fixed: Mapping[str, Any] = field(default_factory=dict)  # values it imposes
    why: str = ""  # why the settings it does not take are refused
    why_fixed: str = ""  # why the fixed values are fixed


BUILTIN_KINDS: Mapping[str, BuiltinKind] = {
    "linux": BuiltinKind(
        name="linux",
        description="a plain node: a QEMU machine on a catalog image",
        machine=True,
        settings=frozenset(NODE_SETTINGS),
        from_defaults=frozenset(NODE_SETTINGS),
    ),
    "nat": BuiltinKind(
        name="nat",
        description="a way out for the node linked to its eth0: QEMU user networking on that "
        "node's NIC, with host ports on 127.0.0.1 forwarded to it (management.forwards); "
        "it reaches nothing outside unless management.restrict is false",
        machine=False,
        settings=frozenset({"host", "management", "nics"}),
        from_defaults=frozenset({"host"}),
        fixed={"nics": 1},
        why="it is no machine, only user networking for the node linked to it",
        why_fixed="its one NIC, eth0, serves one node; give each node that needs a way out a "
        "nat node of its own",
    ),
}
DEFAULT_KIND = "linux"
