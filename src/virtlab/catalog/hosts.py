"""Host rows as plain records: the machines nodes run on, and how they were last seen."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from virtlab.catalog.models import LOCAL_HOST_NAME, HostRow, NodeRow

__all__ = ["LOCAL_HOST_NAME", "HostRecord", "HostRepository"]


@dataclass(frozen=True)
class HostRecord:
    name: str
    uri: str  # "local" for the server's own machine
    state: str  # up | down, as last seen
    created_at: datetime
    facts: dict = field(default_factory=dict)  # versions, accelerators, CPUs, memory
    drained: bool = False  # gets no new nodes

    @property
    def local(self) -> bool:
        return self.name == LOCAL_HOST_NAME

    @classmethod
    def from_row(cls, row: HostRow) -> HostRecord:
        created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
        return cls(row.name, row.uri, row.state, created, json.loads(row.facts or "{}"),
                   row.drained)  # fmt: skip


class HostRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, record: HostRecord) -> None:
        self.session.add(
            HostRow(name=record.name, uri=record.uri, state=record.state,
                    facts=json.dumps(record.facts), drained=record.drained,
                    created_at=record.created_at)
        )  # fmt: skip
        self.session.flush()

    def get(self, name: str) -> HostRecord | None:
        row = self.session.get(HostRow, name)
        return HostRecord.from_row(row) if row else None

    def by_uri(self, uri: str) -> HostRecord | None:
        row = self.session.scalar(select(HostRow).where(HostRow.uri == uri))
        return HostRecord.from_row(row) if row else None

    def list(self) -> list[HostRecord]:
        """The local host first, then the others by name."""
        rows = self.session.scalars(select(HostRow).order_by(HostRow.name))
        records = [HostRecord.from_row(r) for r in rows]
        return sorted(records, key=lambda r: not r.local)

    def update(self, name: str, **fields: object) -> HostRecord:
        row = self.session.get(HostRow, name)
        if row is None:
            raise KeyError(name)
        for key, value in fields.items():
            setattr(row, key, json.dumps(value) if key == "facts" else value)
        self.session.flush()
        return HostRecord.from_row(row)

    def remove(self, name: str) -> None:
        row = self.session.get(HostRow, name)
        if row is not None:
            self.session.delete(row)
            self.session.flush()

    def node_counts(self) -> dict[str, int]:
        rows = self.session.execute(select(NodeRow.host, func.count()).group_by(NodeRow.host))
        return {host: int(count) for host, count in rows}

    def ram_promised(self) -> dict[str, int]:
        """MB of RAM of the nodes placed on each host (running or not: each may start)."""
        rows = self.session.execute(
            select(NodeRow.host, func.sum(NodeRow.ram_mb)).group_by(NodeRow.host)
        )
        return {host: int(total or 0) for host, total in rows}
