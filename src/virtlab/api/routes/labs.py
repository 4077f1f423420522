"""``/api/labs``: list, create or deploy (from a topology file), show, start, stop, destroy,
export, graph; and the topology file's JSON Schema."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, Field

from virtlab.api.access import AccessDep
from virtlab.api.deps import RuntimeDep
from virtlab.api.errors import refusal
from virtlab.api.node_schemas import Node
from virtlab.api.routes.links import Link
from virtlab.api.routes.links import _out as link_out
from virtlab.errors import InvalidRequest
from virtlab.names import LAB, LEGACY_LABEL
from virtlab.services.labs import LabSummary
from virtlab.topology import json_schema

router = APIRouter(tags=["labs"])

REFUSED = {
    400: refusal("Bad request or topology file (every problem listed)"),
    404: refusal("No such lab or image"),
    409: refusal(
        "Exists and differs, a node's state forbids it, or a limit would be passed "
        "(nodes per user; RAM promised against the host's memory)"
    ),
}
# A lab named in a path is looked up: made before today's rule, it may only follow the old one.
LabName = Annotated[str, Path(pattern=LEGACY_LABEL, description="the lab's name")]
NewLabName = LAB.field("an empty lab of this name")
_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/plain")


class LabCreate(BaseModel):
    name: NewLabName | None = None
    topology: str | None = Field(
        None, max_length=1 << 20, description="a topology file (YAML) to deploy"
    )
    image: str | None = Field(None, description="replaces topology.defaults.image")
    start: bool = Field(True, description="start the nodes once deployed")


class LabInfo(BaseModel):
    id: str
    name: str
    nodes: int
    running: int
    links: int
    changed: bool | None = Field(None, description="after a deploy: false if nothing changed")

    @classmethod
    def of(cls, summary: LabSummary, changed: bool | None = None) -> LabInfo:
        return cls(
            id=summary.lab.id, name=summary.lab.name, nodes=len(summary.nodes),
            running=sum(1 for n in summary.nodes if n.state == "running"),
            links=summary.links, changed=changed,
        )  # fmt: skip


class LabDetail(LabInfo):
    node_list: list[Node]
    link_list: list[Link]


@router.get("/api/labs", response_model=list[LabInfo], summary="List labs")
def list_labs(runtime: RuntimeDep, access: AccessDep) -> list[LabInfo]:
    """An admin sees every lab; a user their own."""
    return [LabInfo.of(s) for s in runtime.labs.list() if access.owns(s.lab)]


@router.get("/api/labs/schema", summary="The topology file's JSON Schema")
def lab_schema() -> dict:
    return json_schema()


@router.post(
    "/api/labs", status_code=201, response_model=LabInfo, responses=REFUSED,
    summary="Create an empty lab, or deploy one from a topology file (JSON or a YAML body)",
    openapi_extra={"requestBody": {"content": {
        "application/json": {"schema": LabCreate.model_json_schema()},
        "application/yaml": {"schema": {"type": "string"}},
    }}},
)  # fmt: skip
async def create_lab(
    request: Request, runtime: RuntimeDep, response: Response, access: AccessDep,
    image: Annotated[str | None, Query(description="for a YAML body")] = None,
    start: Annotated[bool, Query(description="for a YAML body")] = True,
) -> LabInfo:  # fmt: skip
    """`curl -X POST --data-binary @lab.yaml -H 'content-type: application/yaml' URL` deploys a
    lab; deploying the same file again changes nothing (200 instead of 201)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in _YAML_TYPES:
        body = LabCreate(topology=(await request.body()).decode("utf-8", "replace"),
                         image=image, start=start)  # fmt: skip
    else:
        try:
            body = LabCreate.model_validate_json(await request.body())
        except ValueError as exc:
            raise InvalidRequest(
                f"send JSON {{name}} or {{topology}}, or a YAML body: {exc}"
            ) from exc
    if body.topology is not None:
        lab, changed = await runtime.labs.deploy(
            body.topology, image=body.image, start=body.start, owner_id=access.who.user_id,
            may_touch=access.owns,
        )  # fmt: skip
        if not changed:
            response.status_code = 200
        return LabInfo.of(runtime.labs.summary(lab), changed)
    if body.name is None:
        raise InvalidRequest("give a lab name, or a topology file to deploy")
    lab = await runtime.labs.create(body.name, owner_id=access.who.user_id)
    return LabInfo.of(runtime.labs.summary(lab))


@router.get("/api/labs/{name}", response_model=LabDetail, responses=REFUSED,
            summary="A lab with its nodes and links")  # fmt: skip
def get_lab(name: LabName, runtime: RuntimeDep) -> LabDetail:
    summary = runtime.labs.summary(runtime.labs.get(name))
    info = LabInfo.of(summary)
    settings = runtime.settings
    nodes = [
        Node.of(n, settings.console_host, name, settings.console_tickets_required)
        for n in summary.nodes
    ]
    links = [link_out(runtime, link) for link in runtime.links.list(summary.lab.id)]
    return LabDetail(**info.model_dump(), node_list=nodes, link_list=links)


def _lab_action(action: str, summary: str) -> None:
    async def act(name: LabName, runtime: RuntimeDep) -> LabInfo:
        await getattr(runtime.labs, action)(name)
        return LabInfo.of(runtime.labs.summary(runtime.labs.get(name)))

    act.__name__ = f"{action}_lab"
    router.add_api_route(f"/api/labs/{{name}}/{action}", act, methods=["POST"],
                         response_model=LabInfo, responses=REFUSED, summary=summary)  # fmt: skip


_lab_action("start", "Start every stopped node of the lab, a few at a time")
_lab_action("stop", "Stop every running node of the lab")


@router.delete("/api/labs/{name}", status_code=204, responses=REFUSED,
               summary="Destroy a lab: kill and delete its nodes and links")  # fmt: skip
async def destroy_lab(name: LabName, runtime: RuntimeDep) -> Response:
    await runtime.labs.destroy(name)
    return Response(status_code=204)


@router.get(
    "/api/labs/{name}/export", response_class=Response,
    responses={**REFUSED, 200: {"content": {"application/yaml": {}}}},
    summary="The lab as a topology file that redeploys it",
)  # fmt: skip
def export_lab(name: LabName, runtime: RuntimeDep) -> Response:
    return Response(runtime.labs.export(name), media_type="application/yaml")


@router.get("/api/labs/{name}/graph", response_class=Response, responses=REFUSED,
            summary="A picture of the lab: SVG (Graphviz) or DOT")  # fmt: skip
def graph_lab(
    name: LabName, runtime: RuntimeDep,
    format: Annotated[Literal["svg", "dot"], Query()] = "svg",
) -> Response:  # fmt: skip
    media = "image/svg+xml" if format == "svg" else "text/vnd.graphviz"
    return Response(runtime.labs.graph(name, format), media_type=media)
