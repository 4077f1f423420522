"""``/api/nodes``: create, list, show, edit, delete, lifecycle actions, screenshot, consoles."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, WebSocket

from virtlab.api.access import AMBIGUOUS, AccessDep
from virtlab.api.deps import NodeServiceDep, RuntimeDep
from virtlab.api.errors import refusal
from virtlab.api.node_schemas import (
    ConsoleTicketOut,
    ConsoleTicketRequest,
    Node,
    NodeCreate,
    NodeUpdate,
)
from virtlab.consoles import serve_serial, serve_vnc
from virtlab.errors import NotFound, VirtlabError
from virtlab.services.nodes import NodeSettings

router = APIRouter(tags=["nodes"])

NOT_FOUND = {404: refusal("No such node"), 400: refusal(AMBIGUOUS[0].upper() + AMBIGUOUS[1:])}
REFUSED = {**NOT_FOUND, 409: refusal("Not now: the node's state forbids it")}
NodeRef = Annotated[
    str, Path(min_length=1, max_length=130, description="the node's id, NAME, or LAB:NAME")
]


def _out(runtime: RuntimeDep, record) -> Node:  # type: ignore[no-untyped-def]
    settings = runtime.settings
    return Node.of(
        record, settings.console_host, runtime.nodes.lab_name(record.lab_id),
        settings.console_tickets_required,
    )  # fmt: skip


@router.post(
    "/api/nodes", status_code=201, response_model=Node, summary="Create a node",
    responses={400: refusal("Bad settings"),
               404: refusal("No such image"),
               409: refusal("Name taken, image not usable, the owner's node limit "
                            "(VIRTLAB_MAX_NODES_PER_USER) reached, or with `start` the host's "
                            "memory cannot hold its RAM")},
)  # fmt: skip
async def create_node(
    body: NodeCreate, nodes: NodeServiceDep, runtime: RuntimeDep, access: AccessDep
) -> Node:
    """Make the node's disk (a qcow2 overlay over the image, in constant time) and record it.
    The node is `stopped`; start it with `POST /api/nodes/{id}/start`, or ask for `start`
    here: the reply then comes once QEMU runs, and a start that fails leaves nothing made. A
    user names a lab of theirs; without one the node goes to the `default` lab, which is the
    admins'."""
    access.lab_for_node(body.lab)
    fields = body.model_dump(exclude={"position", "start"})
    settings = NodeSettings(
        **fields | {"extra_args": tuple(body.extra_args)},
        position=(body.position.x, body.position.y) if body.position else None,
    )
    return _out(runtime, await nodes.create(settings, start=body.start))


@router.get("/api/nodes", response_model=list[Node], summary="List nodes")
def list_nodes(nodes: NodeServiceDep, runtime: RuntimeDep, access: AccessDep) -> list[Node]:
    return [_out(runtime, r) for r in nodes.list() if access.owns_lab_id(r.lab_id)]


@router.get("/api/nodes/{ref}", response_model=Node, summary="Show a node", responses=NOT_FOUND)
def get_node(ref: NodeRef, nodes: NodeServiceDep, runtime: RuntimeDep) -> Node:
    return _out(runtime, nodes.get(ref))


@router.patch(
    "/api/nodes/{ref}",
    response_model=Node,
    summary="Change a stopped node's settings",
    responses={**REFUSED, 400: refusal(f"Bad settings, or {AMBIGUOUS}")},
)
async def edit_node(
    ref: NodeRef, body: NodeUpdate, nodes: NodeServiceDep, runtime: RuntimeDep
) -> Node:
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    if "extra_args" in changes:
        changes["extra_args"] = tuple(changes["extra_args"])
    if body.position is not None:
        changes["position"] = (body.position.x, body.position.y)
    return _out(runtime, await nodes.edit(ref, **changes))


@router.delete(
    "/api/nodes/{ref}",
    status_code=204,
    summary="Delete a stopped node and its disk",
    responses=REFUSED,
)
async def delete_node(ref: NodeRef, nodes: NodeServiceDep) -> Response:
    await nodes.delete(ref)
    return Response(status_code=204)


STARTS = {**NOT_FOUND, 409: refusal(
    "Not now: the node's state forbids it, or the host's memory cannot hold its RAM beside "
    "what runs (VIRTLAB_MEMORY_RESERVE_MB, VIRTLAB_MEMORY_OVERCOMMIT)"
)}  # fmt: skip


def _action(name: str, summary: str) -> None:
    async def act(ref: NodeRef, nodes: NodeServiceDep, runtime: RuntimeDep) -> Node:
        return _out(runtime, await getattr(nodes, name)(ref))

    act.__name__ = f"{name}_node"
    router.add_api_route(
        f"/api/nodes/{{ref}}/{name}", act, methods=["POST"], response_model=Node,
        summary=summary, responses=STARTS if name == "start" else REFUSED,
    )  # fmt: skip


_action("start", "Start a node; returns once QEMU runs")
_action("kill", "End a node's QEMU at once")
_action("reset", "Reset a running node (like its reset button)")
_action("suspend", "Pause a running node's vCPUs")
_action("resume", "Resume a suspended node")
_action("wipe", "Give a stopped node a fresh disk (its changes are lost)")


@router.post(
    "/api/nodes/{ref}/stop",
    response_model=Node,
    responses=REFUSED,
    summary="Stop a node: ACPI power-down, then a hard stop after the timeout",
)
async def stop_node(
    ref: NodeRef, nodes: NodeServiceDep, runtime: RuntimeDep,
    timeout: Annotated[float | None, Query(ge=0, le=3600, description="seconds")] = None,
) -> Node:  # fmt: skip
    return _out(runtime, await nodes.stop(ref, timeout))


@router.get(
    "/api/nodes/{ref}/screenshot",
    summary="The node's display as a PNG",
    responses={**REFUSED, 200: {"content": {"image/png": {}}}},
    response_class=Response,
)
async def screenshot(ref: NodeRef, nodes: NodeServiceDep) -> Response:
    return Response(await nodes.screenshot(ref), media_type="image/png")


@router.post(
    "/api/nodes/{ref}/console/ticket", response_model=ConsoleTicketOut,
    responses={**REFUSED, 400: refusal(f"A body that is not JSON, or {AMBIGUOUS}")},
    summary="A short-lived, single-use ticket for a running node's telnet or VNC port",
)  # fmt: skip
def console_ticket(
    ref: NodeRef, body: ConsoleTicketRequest, nodes: NodeServiceDep, runtime: RuntimeDep
) -> ConsoleTicketOut:
    """Console ports on an address beyond loopback (VIRTLAB_CONSOLE_HOST) ask for a ticket:
    typed at the telnet port's prompt, or given as the VNC password. A ticket works once, for
    VIRTLAB_CONSOLE_TICKET_SECONDS (60 s by default). On loopback no ticket is asked for:
    the answer says `required: false` and where the port is."""
    issued = runtime.consoles.issue_ticket(nodes.get(ref), body.kind)
    return ConsoleTicketOut(**dataclasses.asdict(issued))


@router.websocket("/api/nodes/{ref}/console/serial")
async def serial_console(websocket: WebSocket, ref: str, runtime: RuntimeDep) -> None:
    """The serial console for xterm.js: output as binary frames, input as text or binary."""
    try:
        record = runtime.nodes.get(ref)
        hub = runtime.consoles.hub(record)
    except VirtlabError as exc:
        await _refuse(websocket, exc)
        return
    await serve_serial(websocket, hub)


@router.websocket("/api/nodes/{ref}/console/vnc")
async def vnc_console(websocket: WebSocket, ref: str, runtime: RuntimeDep) -> None:
    """VNC for noVNC: raw RFB in binary frames, as websockify serves it."""
    try:
        record = runtime.nodes.get(ref)
        path = runtime.consoles.vnc_socket(record)
    except VirtlabError as exc:
        await _refuse(websocket, exc)
        return
    await serve_vnc(websocket, path)


async def _refuse(websocket: WebSocket, exc: VirtlabError) -> None:
    """Accept, then close with the reason: a browser sees the reason, not a bare 403."""
    await websocket.accept()
    code = 4404 if isinstance(exc, NotFound) else 4409
    await websocket.close(code=code, reason=str(exc)[:120])
