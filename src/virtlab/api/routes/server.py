"""The server itself, for admins: how its event loop keeps up (``virtlab._util.loopwatch``)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from virtlab.api.auth import AdminDep
from virtlab.api.deps import RuntimeDep
from virtlab.errors import NotFound

router = APIRouter(tags=["server"])


class LoopStall(BaseModel):
    at: float = Field(description="when it ended, seconds since the epoch")
    ms: float = Field(description="how late the loop answered")
    how: str = Field(
        description="blocked: its thread slept in a system call outside the selector (work "
        "that belongs in a thread); waiting: it waited for the interpreter lock (or a lock) "
        "held by another thread; busy: it ran or waited for a CPU"
    )
    where: str = Field(description="the code that held the loop: path:line function")
    syscall: str = Field(description="the system call it slept in, if it slept")


class LoopReport(BaseModel):
    interval_ms: float = Field(description="how often the watchdog asks the loop")
    threshold_ms: float = Field(description="an answer later than this is a stall")
    samples: int
    max_lag_ms: float
    p99_lag_ms: float = Field(description="of the recent samples")
    blocked: int = Field(description="stalls with the loop's thread asleep in a system call")
    waiting: int = Field(description="stalls with the loop's thread waiting on a futex")
    busy: int = Field(description="stalls with the loop's thread running or waiting for a CPU")
    stalls: list[LoopStall] = Field(description="the most recent stalls, oldest first")


@router.get(
    "/api/server/loop",
    response_model=LoopReport,
    summary="How late the event loop answers, and what held it (admins)",
    responses={404: {"description": "The watchdog is off (VIRTLAB_LOOP_STALL_MS=0)"}},
)
async def loop_report(_admin: AdminDep, runtime: RuntimeDep) -> LoopReport:
    if runtime.loop_watch is None:
        raise NotFound("the event loop's watchdog is off; set VIRTLAB_LOOP_STALL_MS above 0")
    stats = runtime.loop_watch.stats()
    return LoopReport(
        interval_ms=stats.interval_ms,
        threshold_ms=stats.threshold_ms,
        samples=stats.samples,
        max_lag_ms=stats.max_lag_ms,
        p99_lag_ms=stats.p99_lag_ms,
        blocked=stats.blocked,
        waiting=stats.waiting,
        busy=stats.busy,
        stalls=[
            LoopStall(at=s.at, ms=s.ms, how=s.how, where=s.where, syscall=s.syscall)
            for s in stats.stalls
        ],
    )
