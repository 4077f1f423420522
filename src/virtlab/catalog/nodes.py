"""Node rows as plain records, and the queries over them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from virtlab.catalog.models import DEFAULT_LAB_ID, LOCAL_HOST_NAME, LabRow, NodeRow

__all__ = ["NodeRecord", "NodeRepository"]


@dataclass(frozen=True)
class NodeRecord:
    id: str
    name: str
    image: str
    cpus: int
    ram_mb: int
    disk_bus: str
    nics: int
    nic_model: str
    serial: bool
    vnc: bool
    state: str
    created_at: datetime
    disk_size_mb: int | None = None
    extra_args: tuple[str, ...] = field(default=())
    telnet_port: int | None = None
    vnc_port: int | None = None
    detail: str = ""
    lab_id: str = DEFAULT_LAB_ID
    kind: str = ""
    # User-mode networking: {"mgmt": USERNET} is a management NIC after the data NICs;
    # {"nat": {"<nic>": USERNET + {"node": nat node name, "first": bool, "position": [x, y]}}}
    # are data NICs linked to a NAT node. USERNET = {"forwards": [[proto, host, guest]...],
    # "restrict": bool}.
    management: dict = field(default_factory=dict)
    position_x: float | None = None
    position_y: float | None = None
    host: str = LOCAL_HOST_NAME  # a row of the hosts table

    @classmethod
    def from_row(cls, row: NodeRow) -> NodeRecord:
        fields = {f: getattr(row, f) for f in cls.__dataclass_fields__}
        fields["extra_args"] = tuple(json.loads(row.extra_args or "[]"))
        fields["management"] = json.loads(row.management or "{}")
        if fields["created_at"].tzinfo is None:
            fields["created_at"] = fields["created_at"].replace(tzinfo=UTC)
        return cls(**fields)

    def to_row(self) -> NodeRow:
        fields = asdict(self)
        fields["extra_args"] = json.dumps(list(self.extra_args))
        fields["management"] = json.dumps(self.management)
        return NodeRow(**fields)


class NodeRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, record: NodeRecord) -> None:
        self.session.add(record.to_row())
        self.session.flush()

    def get(self, node_id: str) -> NodeRecord | None:
        row = self.session.get(NodeRow, node_id)
        return NodeRecord.from_row(row) if row else None

    def by_name(self, name: str, lab_id: str | None = None) -> list[NodeRecord]:
        """Nodes of that name: in one lab (at most one), or in every lab."""
        query = select(NodeRow).where(NodeRow.name == name)
        if lab_id is not None:
            query = query.where(NodeRow.lab_id == lab_id)
        return [NodeRecord.from_row(r) for r in self.session.scalars(query)]

    def in_lab(self, lab_id: str) -> list[NodeRecord]:
        query = select(NodeRow).where(NodeRow.lab_id == lab_id).order_by(NodeRow.name)
        return [NodeRecord.from_row(r) for r in self.session.scalars(query)]

    def list(self) -> list[NodeRecord]:
        rows = self.session.scalars(select(NodeRow).order_by(NodeRow.created_at, NodeRow.name))
        return [NodeRecord.from_row(r) for r in rows]

    def count_by_owner(self) -> dict[str | None, int]:
        """How many nodes the labs of each owner hold (None: labs without an owner)."""
        query = (
            select(LabRow.owner_id, func.count(NodeRow.id))
            .join(LabRow, NodeRow.lab_id == LabRow.id)
            .group_by(LabRow.owner_id)
        )
        return {owner: count for owner, count in self.session.execute(query)}

    def using_image(self, image: str) -> list[str]:
        return list(self.session.scalars(select(NodeRow.name).where(NodeRow.image == image)))

    def update(self, node_id: str, **fields: object) -> NodeRecord:
        row = self.session.get(NodeRow, node_id)
        if row is None:
            raise KeyError(node_id)
        for key, value in fields.items():
            if key == "extra_args":
                value = json.dumps(list(value))  # type: ignore[call-overload]
            elif key == "management":
                value = json.dumps(value)
            setattr(row, key, value)
        self.session.flush()
        return NodeRecord.from_row(row)

    def remove(self, node_id: str) -> bool:
        result = self.session.execute(delete(NodeRow).where(NodeRow.id == node_id))
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def on_host(self, host: str) -> list[NodeRecord]:
        query = select(NodeRow).where(NodeRow.host == host).order_by(NodeRow.name)
        return [NodeRecord.from_row(r) for r in self.session.scalars(query)]

    def ports_in_use(self) -> set[int]:
        rows = self.session.execute(select(NodeRow.telnet_port, NodeRow.vnc_port))
        return {p for row in rows for p in row if p is not None}
