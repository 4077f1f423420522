"""Import jobs as the outside world watches them: which stage, how far, how it ended.

A job is written by the one thread that runs its import and read by API requests; each update
replaces whole attribute values, so readers always see a consistent enough snapshot.
"""

from __future__ import annotations

import enum
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["ImportJob", "ImportJobs", "JobState", "Stage"]


class Stage(enum.StrEnum):
    UPLOAD = "upload"
    UNPACK = "unpack"
    INSPECT = "inspect"
    EXAMINE = "examine"  # qemu-img info + check: the second opinion
    CONVERT = "convert"
    VERIFY = "verify"
    REGISTER = "register"
    DONE = "done"


class JobState(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass
class ImportJob:
    id: str
    source_name: str
    state: JobState = JobState.RUNNING
    stage: Stage = Stage.UPLOAD
    percent: float = 0.0
    bytes_received: int = 0
    error: str | None = None
    images: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    on_change: Callable[[ImportJob], None] | None = field(default=None, repr=False)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    def enter(self, stage: Stage, percent: float = 0.0) -> None:
        self.stage, self.percent = stage, percent
        self._changed()

    def advance(self, percent: float) -> None:
        before = int(self.percent)
        self.percent = max(0.0, min(100.0, percent))
        if int(self.percent) != before:  # whole percents only: a few events per stage
            self._changed()

    def succeed(self, images: list[str]) -> None:
        self.images = images
        self.stage, self.percent, self.state = Stage.DONE, 100.0, JobState.SUCCEEDED
        self.finished_at = time.time()
        self._changed()

    def fail(self, message: str) -> None:
        self.error, self.state, self.finished_at = message, JobState.FAILED, time.time()
        self._changed()


class ImportJobs:
    """The running imports and the last ``keep`` finished ones, by id."""

    def __init__(
        self, keep: int = 100, on_change: Callable[[ImportJob], None] | None = None
    ) -> None:
        self._jobs: OrderedDict[str, ImportJob] = OrderedDict()
        self._lock = threading.Lock()
        self._keep = keep
        self.on_change = on_change

    def start(self, source_name: str, job_id: str | None = None) -> ImportJob:
        job = ImportJob(
            id=job_id or uuid.uuid4().hex, source_name=source_name, on_change=self.on_change
        )
        with self._lock:
            if job.id in self._jobs:
                raise KeyError(job.id)
            self._jobs[job.id] = job
            finished = [j.id for j in self._jobs.values() if j.state is not JobState.RUNNING]
            for old in finished[: max(0, len(finished) - self._keep)]:
                del self._jobs[old]
        return job

    def get(self, job_id: str) -> ImportJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[ImportJob]:
        with self._lock:
            return list(self._jobs.values())
