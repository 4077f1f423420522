"""Lab and link rows as plain records, and the queries over them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from virtlab.catalog.models import DEFAULT_LAB_ID, LabRow, LinkRow

__all__ = ["DEFAULT_LAB_ID", "LabRecord", "LabRepository", "LinkRecord", "LinkRepository"]


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class LabRecord:
    id: str
    name: str
    created_at: datetime
    topology: str = ""
    owner_id: str | None = None  # None: admins only (the default lab, labs made before users)

    @classmethod
    def from_row(cls, row: LabRow) -> LabRecord:
        return cls(row.id, row.name, _utc(row.created_at), row.topology, row.owner_id)


@dataclass(frozen=True)
class LinkRecord:
    id: str
    lab_id: str
    a_node: str
    a_iface: int
    b_node: str
    b_iface: int
    state: str  # up | down
    created_at: datetime
    impairment: dict = field(default_factory=dict)  # {"a_to_b": {...}, "b_to_a": {...}}
    capturing: bool = False
    a_port: int | None = None  # a UDP tunnel's ports, each on its end's host (None: local end)
    b_port: int | None = None
    a_relay_port: int | None = None  # the server's UDP port a host end talks to, if relayed
    b_relay_port: int | None = None

    @property
    def tunnel(self) -> bool:
        """An end is on a libvirt host: its NIC is a UDP tunnel, fixed when that node starts."""
        return self.a_port is not None or self.b_port is not None

    @property
    def via_server(self) -> bool:
        """Its tunnels lead to the server's relay (not straight from host to host)."""
        return self.a_relay_port is not None or self.b_relay_port is not None

    @classmethod
    def from_row(cls, row: LinkRow) -> LinkRecord:
        return cls(
            row.id, row.lab_id, row.a_node, row.a_iface, row.b_node, row.b_iface, row.state,
            _utc(row.created_at), json.loads(row.impairment or "{}"), row.capturing,
            row.a_port, row.b_port, row.a_relay_port, row.b_relay_port,
        )  # fmt: skip

    def ends(self) -> tuple[tuple[str, int], tuple[str, int]]:
        return (self.a_node, self.a_iface), (self.b_node, self.b_iface)


class LabRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, record: LabRecord) -> None:
        self.session.add(
            LabRow(id=record.id, name=record.name, topology=record.topology,
                   created_at=record.created_at, owner_id=record.owner_id)
        )  # fmt: skip
        self.session.flush()

    def get(self, lab_id: str) -> LabRecord | None:
        row = self.session.get(LabRow, lab_id)
        return LabRecord.from_row(row) if row else None

    def by_name(self, name: str) -> LabRecord | None:
        row = self.session.scalar(select(LabRow).where(LabRow.name == name))
        return LabRecord.from_row(row) if row else None

    def list(self) -> list[LabRecord]:
        return [
            LabRecord.from_row(r)
            for r in self.session.scalars(select(LabRow).order_by(LabRow.name))
        ]

    def set_topology(self, lab_id: str, text: str) -> None:
        row = self.session.get(LabRow, lab_id)
        if row is not None:
            row.topology = text

    def remove(self, lab_id: str) -> None:
        self.session.execute(delete(LabRow).where(LabRow.id == lab_id))


class LinkRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, record: LinkRecord) -> None:
        self.session.add(
            LinkRow(
                id=record.id, lab_id=record.lab_id, a_node=record.a_node, a_iface=record.a_iface,
                b_node=record.b_node, b_iface=record.b_iface, state=record.state,
                impairment=json.dumps(record.impairment), capturing=record.capturing,
                created_at=record.created_at, a_port=record.a_port, b_port=record.b_port,
                a_relay_port=record.a_relay_port, b_relay_port=record.b_relay_port,
            )
        )  # fmt: skip
        self.session.flush()

    def get(self, link_id: str) -> LinkRecord | None:
        row = self.session.get(LinkRow, link_id)
        return LinkRecord.from_row(row) if row else None

    def list(self, lab_id: str | None = None) -> list[LinkRecord]:
        query = select(LinkRow).order_by(LinkRow.created_at, LinkRow.id)
        if lab_id is not None:
            query = query.where(LinkRow.lab_id == lab_id)
        return [LinkRecord.from_row(r) for r in self.session.scalars(query)]

    def of_node(self, node_id: str) -> list[LinkRecord]:
        query = select(LinkRow).where(or_(LinkRow.a_node == node_id, LinkRow.b_node == node_id))
        return [LinkRecord.from_row(r) for r in self.session.scalars(query)]

    def at(self, node_id: str, iface: int) -> LinkRecord | None:
        for link in self.of_node(node_id):
            if (node_id, iface) in link.ends():
                return link
        return None

    def update(self, link_id: str, **fields: object) -> LinkRecord:
        row = self.session.get(LinkRow, link_id)
        if row is None:
            raise KeyError(link_id)
        for key, value in fields.items():
            setattr(row, key, json.dumps(value) if key == "impairment" else value)
        self.session.flush()
        return LinkRecord.from_row(row)

    def remove(self, link_id: str) -> None:
        self.session.execute(delete(LinkRow).where(LinkRow.id == link_id))
