"""The lab file as written: pydantic models, every key known (``extra="forbid"``).

These models say what a file may contain and nothing more: no defaults are filled in here (a
field left out is ``None``, so resolution can tell "not written" from "written"), no
cross-references are checked (``virtlab.topology.resolve`` does both). Field descriptions end up
in the published JSON Schema, so they are written for someone editing a lab file.

::

    name: lab1
    topology:
      defaults: {image: boot.qcow2, nics: 2}       # every node
      kinds: {router: {ram_mb: 512, nics: 4}}      # every node of a kind
      nodes: {r1: {kind: router, cpus: 2}, h1: {}} # one node
      links: [{endpoints: ["r1:eth1", "h1:eth1"]}]
"""

from __future__ import annotations

import enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from virtlab.names import ENDPOINT, NODE
from virtlab.nodes.spec import DiskBus, NicModel

__all__ = [
    "BOUNDS",
    "ENDPOINT_PATTERN",
    "ENDPOINT_RULE",
    "MAX_FORWARDS",
    "MAX_LINKS",
    "MAX_NODES",
    "NAME_PATTERN",
    "DirectionImpairmentConfig",
    "ImpairmentConfig",
    "KindConfig",
    "LabFile",
    "LinkConfig",
    "LinkState",
    "ManagementConfig",
    "NodeConfig",
    "NodeDefaults",
    "PortForwardConfig",
    "PositionConfig",
    "Proto",
    "TopologyConfig",
    "TopologyDefaults",
]

NAME_PATTERN = NODE.pattern  # node, kind, lab and host names (virtlab.names)
ENDPOINT_PATTERN = ENDPOINT.pattern
ENDPOINT_RULE = "write an endpoint as node:ethN, e.g. r1:eth1"

# (lowest, highest) of every bounded number: the models and the error messages share them.
BOUNDS: dict[str, tuple[int, int]] = {
    "cpus": (1, 64),
    "ram_mb": (16, 1 << 20),
    "nics": (0, 32),
    "disk_size_mb": (1, 16 << 20),
    "host_port": (1, 65535),
    "guest_port": (1, 65535),
    "delay_ms": (0, 60_000),
    "jitter_ms": (0, 60_000),
    "loss_pct": (0, 100),
    "corrupt_pct": (0, 100),
    "rate_kbps": (0, 100_000_000),
}
MAX_NODES = 512
MAX_LINKS = 8192
MAX_FORWARDS = 64

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Endpoint = Annotated[str, StringConstraints(pattern=ENDPOINT_PATTERN)]


def _bounded(key: str, kind: type, description: str) -> Any:
    low, high = BOUNDS[key]
    return Field(None, ge=kind(low), le=kind(high), description=description)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


class Proto(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"


class LinkState(enum.StrEnum):
    UP = "up"
    DOWN = "down"


class PortForwardConfig(_Strict):
    """One host port forwarded to a guest port; it listens on 127.0.0.1 only."""

    proto: Proto = Field(Proto.TCP, description="tcp (the default) or udp")
    host_port: int = Field(
        ge=BOUNDS["host_port"][0], le=BOUNDS["host_port"][1],
        description="port on 127.0.0.1 of the virtlab host",
    )  # fmt: skip
    guest_port: int = Field(
        ge=BOUNDS["guest_port"][0], le=BOUNDS["guest_port"][1],
        description="port in the guest (QEMU user networking gives the guest 10.0.2.15 by DHCP)",
    )  # fmt: skip


class ManagementConfig(_Strict):
    """QEMU user-mode networking: on a node, an extra management NIC; on a nat node, its NIC."""

    forwards: list[PortForwardConfig] = Field(
        default_factory=list, max_length=MAX_FORWARDS,
        description="host ports (on 127.0.0.1) forwarded to guest ports",
    )  # fmt: skip
    restrict: bool = Field(
        True,
        description="true (the default): the guest reaches nothing outside (only the forwards "
        "reach it); false: the guest may connect out through the host",
    )


class PositionConfig(_Strict):
    """Where the web UI draws the node."""

    x: float = Field(description="canvas x, in pixels")
    y: float = Field(description="canvas y, in pixels")


class NodeDefaults(_Strict):
    """Settings of a node; any may be left out, to come from the kind, then the defaults."""

    image: str | None = Field(
        None, min_length=1, max_length=255, description="a catalog image's name"
    )
    cpus: int | None = _bounded("cpus", int, "virtual CPUs (default 1)")
    ram_mb: int | None = _bounded("ram_mb", int, "memory in MiB (default 256)")
    disk_bus: DiskBus | None = Field(None, description="how the disk is attached (default virtio)")
    nics: int | None = _bounded("nics", int, "how many NICs: eth0, eth1, … (default 1)")
    nic_model: NicModel | None = Field(None, description="NIC model (default virtio-net-pci)")
    disk_size_mb: int | None = _bounded(
        "disk_size_mb", int, "for a CD-ROM image: the size of the blank disk beside it"
    )
    serial: bool | None = Field(None, description="a serial console (default true)")
    vnc: bool | None = Field(None, description="a VNC console (default true)")
    extra_args: list[str] | None = Field(
        None, max_length=32,
        description="extra QEMU arguments, from an allow-list; replaces, never adds to, the "
        "kind's or the defaults' list",
    )  # fmt: skip
    host: str | None = Field(
        None, pattern=NAME_PATTERN,
        description="the virtlab host to place the node on (a hint kept for multi-host labs)",
    )  # fmt: skip
    management: ManagementConfig | None = Field(
        None,
        description="a user-mode management NIC with host port forwards; on a nat node, the "
        "forwards of its NAT",
    )


class KindConfig(NodeDefaults):
    """The settings every node of a kind shares: a new kind, or settings for a builtin kind."""


class NodeConfig(NodeDefaults):
    """One node: its kind, and the settings that differ from its kind's and the defaults."""

    kind: Name | None = Field(
        None,
        description="a kind from topology.kinds or a builtin kind (linux: a plain node; nat: "
        "QEMU user networking for the node linked to its eth0); default: topology.defaults."
        "kind, else linux",
    )
    position: PositionConfig | None = Field(None, description="where the web UI draws the node")


class TopologyDefaults(NodeDefaults):
    """Settings of every node, below its kind's and its own."""

    kind: Name | None = Field(None, description="the kind of a node that names none (else linux)")


class DirectionImpairmentConfig(_Strict):
    """Impairment of the frames going one way."""

    delay_ms: float | None = _bounded("delay_ms", float, "added delay, in milliseconds")
    jitter_ms: float | None = _bounded(
        "jitter_ms", float, "random variation of the delay (±), in milliseconds"
    )
    loss_pct: float | None = _bounded("loss_pct", float, "frames dropped, in percent")
    corrupt_pct: float | None = _bounded("corrupt_pct", float, "frames corrupted, in percent")
    rate_kbps: int | None = _bounded("rate_kbps", int, "rate limit in kbit/s; 0: unlimited")


class ImpairmentConfig(DirectionImpairmentConfig):
    """Impairment of a link: values here apply both ways; a_to_b / b_to_a override per way."""

    a_to_b: DirectionImpairmentConfig | None = Field(
        None, description="from the first endpoint to the second: overrides the values above"
    )
    b_to_a: DirectionImpairmentConfig | None = Field(
        None, description="from the second endpoint to the first: overrides the values above"
    )


class LinkConfig(_Strict):
    """A cable between two NICs: a point-to-point link."""

    endpoints: list[Endpoint] = Field(
        min_length=2, max_length=2,
        description="the two ends, each node:ethN (NIC N of the node), e.g. r1:eth1",
        examples=[["r1:eth1", "r2:eth1"]],
    )  # fmt: skip
    state: LinkState = Field(LinkState.UP, description="up (the default) or down: unplugged")
    impairment: ImpairmentConfig | None = Field(
        None, description="delay, jitter, loss, corruption, rate limit"
    )
    relayed: bool = Field(
        False,
        description="between nodes on libvirt hosts: through the server's relay (capture and "
        "impair it live) instead of straight from host to host; a link to a node on the "
        "server's own host always goes through it",
    )


class TopologyConfig(_Strict):
    """The nodes, their links, and the settings they share."""

    defaults: TopologyDefaults | None = Field(
        default_factory=TopologyDefaults, description="settings of every node"
    )
    kinds: dict[Name, KindConfig] = Field(
        default_factory=dict,
        description="settings per kind, by kind name: a new kind (a plain node with these "
        "settings) or a builtin kind's settings (linux, nat)",
        json_schema_extra={"additionalProperties": False},
    )  # fmt: skip
    nodes: dict[Name, NodeConfig | None] = Field(
        default_factory=dict, max_length=MAX_NODES,
        description="the nodes, by name; `h1: {}` (or `h1:`) is a node with the defaults",
        json_schema_extra={"additionalProperties": False},
    )  # fmt: skip
    links: list[LinkConfig] = Field(
        default_factory=list, max_length=MAX_LINKS, description="the links between the nodes"
    )

    @field_validator("defaults", "kinds", "nodes", mode="before")
    @classmethod
    def _blank_mapping(cls, value: Any) -> Any:
        return {} if value is None else value  # `nodes:` with nothing under it

    @field_validator("links", mode="before")
    @classmethod
    def _blank_list(cls, value: Any) -> Any:
        return [] if value is None else value


class LabFile(_Strict):
    """A virtlab lab file."""

    name: Annotated[str, StringConstraints(pattern=NAME_PATTERN)] = Field(
        description="the lab's name", examples=["lab1"]
    )
    topology: TopologyConfig = Field(
        default_factory=TopologyConfig, description="nodes, links, kinds and defaults"
    )
