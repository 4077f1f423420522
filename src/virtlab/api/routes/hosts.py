"""``/api/hosts``: the machines nodes run on. Everyone logged in may list and read them;
adding, draining and removing are for admins."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field

from virtlab.api.auth import AdminDep
from virtlab.api.deps import RuntimeDep
from virtlab.api.errors import refusal
from virtlab.services.hosts import HostView

__all__ = ["router"]

router = APIRouter(tags=["hosts"])

REFUSED = {
    400: refusal("Bad host name or URI"),
    403: refusal("Needs the admin role"),
    404: refusal("No such host"),
    409: refusal("The name or URI is taken, the host does not answer, or it has nodes"),
}
HostName = Annotated[str, Path(min_length=1, max_length=63)]


class Facts(BaseModel):
    hostname: str = ""
    address: str = Field("", description="where its nodes' UDP tunnels and VNC are reached")
    libvirt_version: str = Field("", description="empty for the local host (direct QEMU)")
    qemu_version: str = ""
    accelerators: list[str] = Field(default_factory=list, description="kvm and/or qemu (TCG)")
    cpus: int = 0
    memory_mb: int = 0
    free_memory_mb: int = 0


class Host(BaseModel):
    name: str
    uri: str = Field(description="`local` for the server's own machine")
    reachable: bool
    reason: str = Field(description="why it does not answer, when it does not")
    drained: bool = Field(description="a drained host gets no new nodes")
    nodes: int = Field(description="nodes placed on it, running or not")
    ram_promised_mb: int = Field(description="RAM of the nodes placed on it")
    room_mb: int = Field(description="memory less the RAM promised: what placement may still use")
    facts: Facts
    created_at: datetime

    @classmethod
    def of(cls, view: HostView) -> Host:
        record = view.record
        facts: dict[str, Any] = {k: v for k, v in record.facts.items() if k in Facts.model_fields}
        return cls(
            name=record.name, uri=record.uri, reachable=view.reachable, reason=view.reason,
            drained=record.drained, nodes=view.nodes, ram_promised_mb=view.ram_promised_mb,
            room_mb=view.room_mb, facts=Facts(**facts), created_at=record.created_at,
        )  # fmt: skip


class HostCreate(BaseModel):
    name: str = Field(description="1 to 63 letters, digits, '_', '.', '-'")
    uri: str = Field(description="qemu+tls://HOST/system, qemu+ssh://USER@HOST/system, qemu+tcp://")
    tls_cert: str | None = Field(
        None, description="a folder on the server with cacert.pem, clientcert.pem, clientkey.pem"
    )


class HostDrain(BaseModel):
    drained: bool = True


@router.get("/api/hosts", response_model=list[Host], summary="List hosts")
def list_hosts(runtime: RuntimeDep) -> list[Host]:
    return [Host.of(view) for view in runtime.hosts.list()]


@router.get("/api/hosts/{name}", response_model=Host, responses=REFUSED,
            summary="A host, its facts read again")  # fmt: skip
async def show_host(name: HostName, runtime: RuntimeDep) -> Host:
    return Host.of(await runtime.hosts.show(name))


@router.post("/api/hosts", status_code=201, response_model=Host, responses=REFUSED,
             summary="Add a libvirt host")  # fmt: skip
async def add_host(body: HostCreate, _admin: AdminDep, runtime: RuntimeDep) -> Host:
    return Host.of(await runtime.hosts.add(body.name, body.uri, body.tls_cert))


@router.post("/api/hosts/{name}/drain", response_model=Host, responses=REFUSED,
             summary="Drain a host (no new nodes), or undrain it")  # fmt: skip
def drain_host(name: HostName, body: HostDrain, _admin: AdminDep, runtime: RuntimeDep) -> Host:
    return Host.of(runtime.hosts.drain(name, body.drained))


@router.delete("/api/hosts/{name}", status_code=204, responses=REFUSED,
               summary="Remove a host that has no nodes")  # fmt: skip
async def remove_host(name: HostName, _admin: AdminDep, runtime: RuntimeDep) -> Response:
    await runtime.hosts.remove(name)
    return Response(status_code=204)
