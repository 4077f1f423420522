"""``/api/nodes/{ref}/checkpoints`` and ``/api/labs/{name}/checkpoints``: list, take, resume
and delete checkpoints. Taking one returns once every save is done; meanwhile ``/api/events``
carries ``checkpoint`` events with the bytes written so far."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field

from virtlab.api.access import AMBIGUOUS
from virtlab.api.deps import RuntimeDep
from virtlab.api.errors import refusal
from virtlab.api.node_schemas import Node
from virtlab.api.routes.labs import LabInfo, LabName
from virtlab.api.routes.nodes import NodeRef
from virtlab.api.routes.nodes import _out as node_out
from virtlab.catalog import NodeRecord
from virtlab.catalog.checkpoints import CheckpointRecord
from virtlab.names import TAG
from virtlab.services.checkpoints import LabCheckpoint

router = APIRouter(tags=["checkpoints"])

REFUSED = {
    400: refusal(f"A tag that cannot name a checkpoint, or {AMBIGUOUS}"),
    404: refusal("No such node, lab or checkpoint"),
    409: refusal("Not now (the reason is in detail: a node's state, a tag in use, a "
                 "checkpoint QEMU cannot load)"),
}  # fmt: skip
Tag = Annotated[str, Path(min_length=1, max_length=255, description="the checkpoint's tag")]
Force = Annotated[
    bool, Query(description="kill the nodes that run first (what they did since is lost)")
]


class CheckpointTake(BaseModel):
    tag: str = Field(examples=["configured"], description=f"a checkpoint tag: {TAG.rule}")


class Checkpoint(BaseModel):
    tag: str
    node: str
    node_id: str
    lab: str = Field(description="the node's lab")
    lab_checkpoint: bool = Field(description="part of a checkpoint of the whole lab")
    state: str = Field(description="saving, ready or deleting")
    created_at: datetime
    ram_mb: int = Field(description="the node's memory when it was taken")
    vm_state_size: int = Field(description="bytes of memory and device state in the disk")
    save_seconds: float = Field(
        description="how long its save took (the nodes of a lab checkpoint stay paused until "
        "the last one is saved)"
    )
    qemu_version: str = Field(description="of the QEMU that saved it")
    machine: str = Field(description="the machine type it was saved on; a resume pins it")
    accel: str
    detail: str

    @classmethod
    def of(cls, row: CheckpointRecord, node: NodeRecord, lab: str) -> Checkpoint:
        return cls(
            tag=row.tag, node=node.name, node_id=node.id, lab=lab,
            lab_checkpoint=row.lab_id is not None, state=row.state, created_at=row.created_at,
            ram_mb=row.ram_mb, vm_state_size=row.vm_state_size, save_seconds=row.save_seconds,
            qemu_version=row.qemu_version, machine=row.machine, accel=row.accel,
            detail=row.detail,
        )  # fmt: skip


class LabCheckpointOut(BaseModel):
    lab: str
    tag: str
    state: str = Field(description="ready once every node's part is")
    created_at: datetime
    ram_mb: int = Field(description="of all its nodes")
    vm_state_size: int = Field(description="bytes of memory and device state, all nodes")
    nodes: list[Checkpoint]

    @classmethod
    def of(cls, checkpoint: LabCheckpoint) -> LabCheckpointOut:
        lab = checkpoint.lab.name
        return cls(
            lab=lab, tag=checkpoint.tag, state=checkpoint.state,
            created_at=checkpoint.created_at,
            ram_mb=sum(r.ram_mb for _, r in checkpoint.members),
            vm_state_size=sum(r.vm_state_size for _, r in checkpoint.members),
            nodes=[Checkpoint.of(row, node, lab) for node, row in checkpoint.members],
        )  # fmt: skip


# -- nodes --------------------------------------------------------------------------------------


def _node_out(runtime: RuntimeDep, ref: str, row: CheckpointRecord) -> Checkpoint:
    node = runtime.nodes.get(ref)
    return Checkpoint.of(row, node, runtime.nodes.lab_name(node.lab_id))


@router.get("/api/nodes/{ref}/checkpoints", response_model=list[Checkpoint], responses=REFUSED,
            summary="A node's checkpoints (its own and its parts of lab checkpoints)")  # fmt: skip
def list_node_checkpoints(ref: NodeRef, runtime: RuntimeDep) -> list[Checkpoint]:
    return [_node_out(runtime, ref, row) for row in runtime.checkpoints.of_node(ref)]


@router.get("/api/nodes/{ref}/checkpoints/{tag}", response_model=Checkpoint, responses=REFUSED,
            summary="One checkpoint of a node")  # fmt: skip
def get_node_checkpoint(ref: NodeRef, tag: Tag, runtime: RuntimeDep) -> Checkpoint:
    return _node_out(runtime, ref, runtime.checkpoints.row(runtime.nodes.get(ref), tag))


@router.post(
    "/api/nodes/{ref}/checkpoints", status_code=201, response_model=Checkpoint,
    responses=REFUSED, summary="Save a running node: memory, devices and disk, in its disk",
)  # fmt: skip
async def take_node_checkpoint(
    ref: NodeRef, body: CheckpointTake, runtime: RuntimeDep
) -> Checkpoint:
    """The guest is paused for the save (about its RAM size written to the node's disk) and
    runs on after it; a suspended node stays suspended."""
    return _node_out(runtime, ref, await runtime.checkpoints.take_node(ref, body.tag))


@router.post(
    "/api/nodes/{ref}/checkpoints/{tag}/resume", response_model=Node, responses=REFUSED,
    summary="Start a stopped node from a checkpoint instead of booting it",
)  # fmt: skip
async def resume_node_checkpoint(
    ref: NodeRef, tag: Tag, runtime: RuntimeDep, force: Force = False
) -> Node:
    record = await runtime.checkpoints.resume_node(ref, tag, force=force)
    return node_out(runtime, record)


@router.delete("/api/nodes/{ref}/checkpoints/{tag}", status_code=204, responses=REFUSED,
               summary="Delete a node's checkpoint (running or not)")  # fmt: skip
async def delete_node_checkpoint(ref: NodeRef, tag: Tag, runtime: RuntimeDep) -> Response:
    await runtime.checkpoints.delete_node(ref, tag)
    return Response(status_code=204)


# -- labs ---------------------------------------------------------------------------------------


@router.get("/api/labs/{name}/checkpoints", response_model=list[LabCheckpointOut],
            responses=REFUSED, summary="A lab's checkpoints")  # fmt: skip
def list_lab_checkpoints(name: LabName, runtime: RuntimeDep) -> list[LabCheckpointOut]:
    return [LabCheckpointOut.of(c) for c in runtime.checkpoints.of_lab(name)]


@router.get("/api/labs/{name}/checkpoints/{tag}", response_model=LabCheckpointOut,
            responses=REFUSED, summary="One checkpoint of a lab")  # fmt: skip
def get_lab_checkpoint(name: LabName, tag: Tag, runtime: RuntimeDep) -> LabCheckpointOut:
    return LabCheckpointOut.of(runtime.checkpoints.lab_checkpoint(name, tag))


@router.post(
    "/api/labs/{name}/checkpoints", status_code=201, response_model=LabCheckpointOut,
    responses=REFUSED, summary="Save every node of a running lab at one moment",
)  # fmt: skip
async def take_lab_checkpoint(
    name: LabName, body: CheckpointTake, runtime: RuntimeDep
) -> LabCheckpointOut:
    """Every running node is paused at once, each is saved (four at a time), then all run on;
    every node must run or be suspended. A failure removes what was saved."""
    return LabCheckpointOut.of(await runtime.checkpoints.take_lab(name, body.tag))


@router.post(
    "/api/labs/{name}/checkpoints/{tag}/resume", response_model=LabInfo, responses=REFUSED,
    summary="Start every node of a stopped lab from a checkpoint: all of them, or none",
)  # fmt: skip
async def resume_lab_checkpoint(
    name: LabName, tag: Tag, runtime: RuntimeDep, force: Force = False
) -> LabInfo:
    await runtime.checkpoints.resume_lab(name, tag, force=force)
    return LabInfo.of(runtime.labs.summary(runtime.labs.get(name)))


@router.delete("/api/labs/{name}/checkpoints/{tag}", status_code=204, responses=REFUSED,
               summary="Delete a lab's checkpoint from every node's disk")  # fmt: skip
async def delete_lab_checkpoint(name: LabName, tag: Tag, runtime: RuntimeDep) -> Response:
    await runtime.checkpoints.delete_lab(name, tag)
    return Response(status_code=204)
