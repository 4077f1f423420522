"""Image rows as plain records, and the queries over them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from virtlab.catalog.models import ImageRow

__all__ = ["ImageRecord", "ImageRepository"]


@dataclass(frozen=True)
class ImageRecord:
    """One catalog image, as every layer above the catalog sees it."""

    name: str
    kind: str
    format: str
    source_format: str
    source_variant: str
    source_name: str
    wrappers: str
    virtual_size: int
    actual_size: int
    sha256: str
    source_sha256: str
    path: str  # relative to the images directory, e.g. "custom/router_1762805489189.qcow2"
    origin: str  # "custom" or "base"
    created_at: datetime

    @classmethod
    def from_row(cls, row: ImageRow) -> ImageRecord:
        fields = {f: getattr(row, f) for f in cls.__dataclass_fields__}
        if fields["created_at"].tzinfo is None:  # SQLite keeps no zone; we store UTC
            fields["created_at"] = fields["created_at"].replace(tzinfo=UTC)
        return cls(**fields)


class ImageRepository:
    """Queries over the ``images`` table; every method runs inside the caller's session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, record: ImageRecord) -> None:
        self.session.add(ImageRow(**asdict(record)))
        self.session.flush()  # a name clash surfaces here, before any file is moved

    def get(self, name: str) -> ImageRecord | None:
        row = self.session.scalar(select(ImageRow).where(ImageRow.name == name))
        return ImageRecord.from_row(row) if row else None

    def list(self) -> list[ImageRecord]:
        rows = self.session.scalars(select(ImageRow).order_by(ImageRow.created_at, ImageRow.name))
        return [ImageRecord.from_row(r) for r in rows]

    def names(self) -> set[str]:
        return set(self.session.scalars(select(ImageRow.name)))

    def remove(self, name: str) -> bool:
        result = self.session.execute(delete(ImageRow).where(ImageRow.name == name))
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def update(self, name: str, **fields: object) -> None:
        row = self.session.scalar(select(ImageRow).where(ImageRow.name == name))
        if row is None:
            raise KeyError(name)
        for key, value in fields.items():
            setattr(row, key, value)
        self.session.flush()
