"""``/api/limits``: the server's limits and where the requester stands against each."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from virtlab.api.auth import PrincipalDep
from virtlab.api.deps import RuntimeDep

router = APIRouter(tags=["limits"])


class ImportsUsage(BaseModel):
    max: int = Field(description="imports in flight the server allows (uploads, lab archives, "
                     "rescans)")  # fmt: skip
    max_per_user: int = Field(description="of those, how many one user may run (admins: no share)")
    running: int = Field(description="imports in flight now, everyone's")
    yours: int = Field(description="imports in flight now that count against your share")


class NodesUsage(BaseModel):
    max_per_user: int = Field(description="nodes a user's labs may hold; 0: no limit")
    yours: int = Field(description="nodes in your labs")
    limited: bool = Field(description="false for admins, whose labs are exempt")


class MemoryUsage(BaseModel):
    host_mb: int = Field(description="the host's memory (MemTotal, or VIRTLAB_HOST_MEMORY_MB)")
    reserve_mb: int = Field(description="kept for the host and the server")
    overcommit: float
    capacity_mb: int = Field(description="RAM nodes may be promised: (host - reserve) x overcommit")
    promised_mb: int = Field(description="RAM of the nodes that run (or start, or are suspended)")
    available_mb: int = Field(description="what one more start may still take")
    active_nodes: int


class LimitsOut(BaseModel):
    imports: ImportsUsage
    nodes: NodesUsage
    memory: MemoryUsage


@router.get("/api/limits", response_model=LimitsOut, summary="Limits, and where you stand")
def limits(runtime: RuntimeDep, who: PrincipalDep) -> LimitsOut:
    """Imports in flight, nodes per user and RAM promised against the host's memory: each
    limit with its current use, so a user sees how close they are before a request is refused."""
    slots, nodes = runtime.images.slots, runtime.nodes
    quota = nodes.quota
    active = nodes.active_ram()
    memory = nodes.memory
    assert quota is not None and memory is not None
    promised = memory.promised_mb(active)
    capacity = memory.budget.capacity_mb
    return LimitsOut(
        imports=ImportsUsage(
            max=slots.limit, max_per_user=slots.per_user, running=slots.running,
            yours=0 if who.is_admin else slots.running_for(who.user_id),
        ),
        nodes=NodesUsage(
            max_per_user=quota.limit, yours=quota.count(who.user_id),
            limited=quota.limit > 0 and not who.is_admin,
        ),
        memory=MemoryUsage(
            host_mb=memory.budget.host_mb, reserve_mb=memory.budget.reserve_mb,
            overcommit=memory.budget.overcommit, capacity_mb=capacity, promised_mb=promised,
            available_mb=max(0, capacity - promised), active_nodes=len(active),
        ),
    )  # fmt: skip
