"""Wire schemas of the nodes API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from virtlab.catalog import NodeRecord
from virtlab.names import LAB, NODE
from virtlab.nodes.names import stable_mac
from virtlab.nodes.qemu.argv import MAX_NICS
from virtlab.nodes.spec import DiskBus, NicModel

NAME_PATTERN = NODE.pattern  # lab and node names: the rules are in virtlab.names
NodeName = NODE.field()
LabName = LAB.field("the lab it belongs to")


class Position(BaseModel):
    x: float
    y: float


class NodeCreate(BaseModel):
    name: NodeName = Field(examples=["r1"])
    image: str = Field(min_length=1, max_length=255, description="a catalog image's name")
    lab: LabName = "default"
    position: Position | None = Field(None, description="where it sits on the lab's canvas")
    cpus: int = Field(1, ge=1, le=64)
    ram_mb: int = Field(256, ge=16, le=1 << 20)
    disk_bus: DiskBus = DiskBus.VIRTIO
    nics: int = Field(1, ge=0, le=MAX_NICS, description="how many NICs: eth0, eth1, …")
    nic_model: NicModel = NicModel.VIRTIO
    disk_size_mb: int | None = Field(
        None, ge=1, le=16 << 20,
        description="for a CD-ROM image: the size of the blank disk beside it",
    )  # fmt: skip
    serial: bool = True
    vnc: bool = True
    extra_args: list[str] = Field(
        default_factory=list, max_length=32, description="extra QEMU arguments (an allow-list)"
    )
    host: str | None = Field(
        None, pattern=NAME_PATTERN,
        description="the host it runs on (`local` or a libvirt host); none: placed by policy",
    )  # fmt: skip
    start: bool = Field(
        False,
        description="start it at once: the reply is the running node; a start that fails "
        "(its RAM refused, QEMU exits) removes the node again and says why",
    )


class NodeUpdate(BaseModel):
    name: NodeName | None = None
    cpus: int | None = Field(None, ge=1, le=64)
    ram_mb: int | None = Field(None, ge=16, le=1 << 20)
    disk_bus: DiskBus | None = None
    nics: int | None = Field(None, ge=0, le=MAX_NICS)
    nic_model: NicModel | None = None
    serial: bool | None = None
    vnc: bool | None = None
    extra_args: list[str] | None = Field(None, max_length=32)
    position: Position | None = None


class Interface(BaseModel):
    name: str = Field(examples=["eth0"])
    mac: str


class SerialConsole(BaseModel):
    telnet_host: str | None
    telnet_port: int | None
    ws: str = Field(description="WebSocket path for xterm.js")


class VncConsole(BaseModel):
    host: str | None
    port: int | None = Field(description="TCP port for desktop VNC clients, if enabled")
    ws: str = Field(description="WebSocket path for noVNC (binary frames)")


class Consoles(BaseModel):
    serial: SerialConsole | None
    vnc: VncConsole | None
    tickets_required: bool = Field(
        description="whether the telnet and VNC TCP ports ask for a ticket (the WebSockets "
        "never do: they need a login)"
    )
    ticket: str = Field(
        description='where to get a ticket: POST {"kind": "telnet"} or {"kind": "vnc"} '
        "here (`virtlab node console-ticket NODE [--kind vnc]`)"
    )


class Node(BaseModel):
    id: str
    name: str
    lab: str
    image: str
    kind: str
    position: Position | None
    state: str = Field(
        description="stopped, starting, running, suspended, stopping, crashed; unknown while "
        "its host does not answer"
    )
    host: str = Field(description="the host it runs on: `local` or a libvirt host's name")
    detail: str = Field(description="why it crashed or failed to start: QEMU's last log lines")
    cpus: int
    ram_mb: int
    disk_bus: str
    nic_model: str
    interfaces: list[Interface]
    disk_size_mb: int | None
    extra_args: list[str]
    consoles: Consoles
    created_at: datetime

    @classmethod
    def of(
        cls, record: NodeRecord, console_host: str, lab: str, tickets_required: bool = False
    ) -> Node:
        base = f"/api/nodes/{record.id}/console"
        position = (
            Position(x=record.position_x, y=record.position_y)
            if record.position_x is not None and record.position_y is not None else None
        )  # fmt: skip
        return cls(
            id=record.id, name=record.name, lab=lab, image=record.image, kind=record.kind,
            position=position, state=record.state, host=record.host,
            detail=record.detail, cpus=record.cpus, ram_mb=record.ram_mb,
            disk_bus=record.disk_bus, nic_model=record.nic_model,
            interfaces=[
                Interface(name=f"eth{i}", mac=stable_mac(record.id, i)) for i in range(record.nics)
            ],
            disk_size_mb=record.disk_size_mb, extra_args=list(record.extra_args),
            consoles=Consoles(
                serial=SerialConsole(
                    telnet_host=console_host if record.telnet_port else None,
                    telnet_port=record.telnet_port, ws=f"{base}/serial",
                ) if record.serial else None,
                vnc=VncConsole(
                    host=console_host if record.vnc_port else None, port=record.vnc_port,
                    ws=f"{base}/vnc",
                ) if record.vnc else None,
                tickets_required=tickets_required, ticket=f"{base}/ticket",
            ),
            created_at=record.created_at,
        )  # fmt: skip


class ConsoleTicketRequest(BaseModel):
    kind: Literal["telnet", "vnc"] = Field("telnet", description="which console port")


class ConsoleTicketOut(BaseModel):
    kind: Literal["telnet", "vnc"]
    host: str = Field(description="where the console port listens")
    port: int
    required: bool = Field(description="whether the port asks for a ticket (false: loopback)")
    ticket: str | None = Field(
        description="type it at the telnet prompt, or give it as the VNC password; it works "
        "once; null when the port asks for none"
    )
    expires_in: float | None = Field(description="seconds the ticket stays valid")
