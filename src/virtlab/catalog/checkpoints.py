"""Checkpoint rows as plain records, and the queries over them.

A row is written (``saving``) before QEMU saves, made ``ready`` after, and marked ``deleting``
before the snapshot is removed: a server that dies in between finds out at start-up which of
them the disk really holds (``virtlab.services.checkpoints``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from virtlab.catalog.models import CheckpointRow

__all__ = ["DELETING", "READY", "SAVING", "CheckpointRecord", "CheckpointRepository"]

SAVING, READY, DELETING = "saving", "ready", "deleting"


@dataclass(frozen=True)
class CheckpointRecord:
    id: str
    node_id: str
    tag: str
    state: str  # saving | ready | deleting
    created_at: datetime
    ram_mb: int
    lab_id: str | None = None  # set for one node's part of a lab checkpoint
    vm_state_size: int = 0
    save_seconds: float = 0.0
    qemu_version: str = ""
    machine: str = ""
    accel: str = ""
    detail: str = ""

    @classmethod
    def from_row(cls, row: CheckpointRow) -> CheckpointRecord:
        fields = {f: getattr(row, f) for f in cls.__dataclass_fields__}
        if fields["created_at"].tzinfo is None:
            fields["created_at"] = fields["created_at"].replace(tzinfo=UTC)
        return cls(**fields)


class CheckpointRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, record: CheckpointRecord) -> None:
        self.session.add(CheckpointRow(**asdict(record)))
        self.session.flush()

    def get(self, node_id: str, tag: str) -> CheckpointRecord | None:
        query = select(CheckpointRow).where(
            CheckpointRow.node_id == node_id, CheckpointRow.tag == tag
        )
        row = self.session.scalar(query)
        return CheckpointRecord.from_row(row) if row else None

    def of_node(self, node_id: str) -> list[CheckpointRecord]:
        query = (
            select(CheckpointRow)
            .where(CheckpointRow.node_id == node_id)
            .order_by(CheckpointRow.created_at, CheckpointRow.tag)
        )
        return [CheckpointRecord.from_row(r) for r in self.session.scalars(query)]

    def of_lab(self, lab_id: str, tag: str | None = None) -> list[CheckpointRecord]:
        """The rows of the lab's checkpoints (of one tag if given)."""
        query = select(CheckpointRow).where(CheckpointRow.lab_id == lab_id)
        if tag is not None:
            query = query.where(CheckpointRow.tag == tag)
        query = query.order_by(CheckpointRow.created_at, CheckpointRow.tag)
        return [CheckpointRecord.from_row(r) for r in self.session.scalars(query)]

    def list(self) -> list[CheckpointRecord]:
        query = select(CheckpointRow).order_by(CheckpointRow.node_id, CheckpointRow.created_at)
        return [CheckpointRecord.from_row(r) for r in self.session.scalars(query)]

    def update(self, checkpoint_id: str, **fields: object) -> CheckpointRecord:
        row = self.session.get(CheckpointRow, checkpoint_id)
        if row is None:
            raise KeyError(checkpoint_id)
        for key, value in fields.items():
            setattr(row, key, value)
        self.session.flush()
        return CheckpointRecord.from_row(row)

    def remove(self, checkpoint_id: str) -> None:
        self.session.execute(delete(CheckpointRow).where(CheckpointRow.id == checkpoint_id))
