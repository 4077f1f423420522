"""``/api/links``: add, list, show, change (state, impairment), remove; capture and live stream."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, Field

from virtlab.api.access import AccessDep
from virtlab.api.deps import RuntimeDep
from virtlab.api.errors import refusal
from virtlab.catalog.labs import LinkRecord

router = APIRouter(tags=["links"])

REFUSED = {
    400: refusal("Bad request"),
    404: refusal("No such link, node or lab"),
    409: refusal("An interface already carries a link"),
}
LinkId = Annotated[str, Path(min_length=1, max_length=32)]


class OneWay(BaseModel):
    delay_ms: float = Field(0, ge=0, le=60000)
    jitter_ms: float = Field(0, ge=0, le=60000)
    loss_pct: float = Field(0, ge=0, le=100)
    corrupt_pct: float = Field(0, ge=0, le=100)
    rate_kbps: int = Field(0, ge=0, le=100_000_000, description="0: unlimited")


class Impairment(BaseModel):
    a_to_b: OneWay | None = None
    b_to_a: OneWay | None = None


class LinkCreate(BaseModel):
    lab: str = Field("default", max_length=63)
    a: str = Field(examples=["r1:eth1"], description="NODE:ethN")
    b: str = Field(examples=["r2:eth1"])
    state: Literal["up", "down"] = "up"
    impairment: Impairment | None = None
    relayed: bool = Field(
        False,
        description="between nodes on libvirt hosts: through the server's relay (capture and "
        "impair it live) instead of straight from host to host; a link to a node on the "
        "server's own host always goes through it",
    )


class LinkUpdate(BaseModel):
    state: Literal["up", "down"] | None = None
    impairment: Impairment | None = Field(None, description="replaces the impairment; {} clears")


class Link(BaseModel):
    id: str
    lab: str
    a: str = Field(description="NODE:ethN")
    b: str
    a_node: str = Field(description="node id")
    b_node: str
    state: str
    impairment: dict
    capturing: bool
    relayed: bool = Field(
        description="true while a relay in the server carries it (capture, impairment, a node "
        "on a libvirt host)"
    )
    path: Literal["direct", "relayed", "tunnel"] = Field(
        description="direct: two local nodes, kernel to kernel; relayed: through the server's "
        "relay; tunnel: UDP straight between two libvirt hosts (stop its nodes to capture it)"
    )
    readers: int = Field(0, description="live capture streams being read now")


def _out(runtime: RuntimeDep, link: LinkRecord) -> Link:
    links = runtime.links
    a, b = links.node_of(link.a_node), links.node_of(link.b_node)
    return Link(
        id=link.id, lab=runtime.nodes.lab_name(link.lab_id), a=f"{a.name}:eth{link.a_iface}",
        b=f"{b.name}:eth{link.b_iface}", a_node=a.id, b_node=b.id, state=link.state,
        impairment=link.impairment, capturing=link.capturing,
        relayed=links.relay(link.id) is not None, readers=links.readers(link.id),
        path=links.path(link),
    )  # fmt: skip


def _imp(body: Impairment | None) -> dict | None:
    return body.model_dump(exclude_none=True) if body is not None else None


@router.post("/api/links", status_code=201, response_model=Link, responses=REFUSED,
             summary="Link two interfaces (nodes may run)")  # fmt: skip
async def add_link(body: LinkCreate, runtime: RuntimeDep, access: AccessDep) -> Link:
    access.lab(body.lab)
    link = await runtime.links.add(
        body.lab, body.a, body.b, state=body.state, impairment=_imp(body.impairment),
        relayed=body.relayed,
    )  # fmt: skip
    return _out(runtime, link)


@router.get("/api/links", response_model=list[Link], summary="List links",
            responses={404: refusal("No such lab")})  # fmt: skip
def list_links(
    runtime: RuntimeDep, access: AccessDep,
    lab: Annotated[str | None, Query(max_length=63)] = None,
) -> list[Link]:  # fmt: skip
    lab_id = access.lab(lab).id if lab else None
    links = runtime.links.list(lab_id)
    return [_out(runtime, link) for link in links if access.owns_lab_id(link.lab_id)]


@router.get("/api/links/{link_id}", response_model=Link, responses=REFUSED, summary="Show a link")
def get_link(link_id: LinkId, runtime: RuntimeDep) -> Link:
    return _out(runtime, runtime.links.get(link_id))


@router.patch(
    "/api/links/{link_id}", response_model=Link, responses=REFUSED,
    summary="Set a link down or up, or change its impairment, while traffic flows",
)  # fmt: skip
async def update_link(link_id: LinkId, body: LinkUpdate, runtime: RuntimeDep) -> Link:
    link = runtime.links.get(link_id)
    if body.state is not None:
        link = await runtime.links.set_state(link.id, body.state)
    if "impairment" in body.model_fields_set:
        link = await runtime.links.set_impairment(link.id, _imp(body.impairment))
    return _out(runtime, link)


@router.delete("/api/links/{link_id}", status_code=204, responses=REFUSED, summary="Unlink")
async def delete_link(link_id: LinkId, runtime: RuntimeDep) -> Response:
    await runtime.links.remove(link_id)
    return Response(status_code=204)


@router.post("/api/links/{link_id}/capture/start", response_model=Link, responses=REFUSED,
             summary="Capture the link's frames, both ways, to a pcap file")  # fmt: skip
async def start_capture(link_id: LinkId, runtime: RuntimeDep) -> Link:
    await runtime.links.start_capture(link_id)
    return _out(runtime, runtime.links.get(link_id))


@router.post("/api/links/{link_id}/capture/stop", response_model=Link, responses=REFUSED,
             summary="Stop capturing (the file stays for download)")  # fmt: skip
async def stop_capture(link_id: LinkId, runtime: RuntimeDep) -> Link:
    return _out(runtime, await runtime.links.stop_capture(link_id))


@router.get(
    "/api/links/{link_id}/capture", response_class=FileResponse, responses=REFUSED,
    summary="Download the newest capture (pcap; also while it is being written)",
)  # fmt: skip
def download_capture(link_id: LinkId, runtime: RuntimeDep) -> FileResponse:
    path = runtime.links.capture_file(link_id)
    return FileResponse(path, media_type="application/vnd.tcpdump.pcap", filename=path.name)


@router.get(
    "/api/links/{link_id}/capture/stream", responses=REFUSED,
    summary="A live pcap stream: curl -N URL | wireshark -k -i -",
)  # fmt: skip
async def stream_capture(link_id: LinkId, runtime: RuntimeDep) -> StreamingResponse:
    runtime.links.get(link_id)  # 404 before the stream starts
    return StreamingResponse(
        runtime.links.stream(link_id), media_type="application/vnd.tcpdump.pcap"
    )
