"""User and token rows as plain records, and the queries over them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from virtlab.catalog.models import LabRow, TokenRow, UserRow

__all__ = ["TokenRecord", "UserRecord", "UserRepository"]


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class UserRecord:
    id: str
    name: str
    role: str  # admin | user
    password_hash: str
    created_at: datetime

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @classmethod
    def from_row(cls, row: UserRow) -> UserRecord:
        return cls(row.id, row.name, row.role, row.password_hash, _utc(row.created_at))  # type: ignore[arg-type]


@dataclass(frozen=True)
class TokenRecord:
    id: str
    user_id: str
    kind: str  # api | session
    name: str
    digest: str  # sha256 of the secret; the secret itself is never stored
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = None

    @classmethod
    def from_row(cls, row: TokenRow) -> TokenRecord:
        return cls(
            row.id, row.user_id, row.kind, row.name, row.digest,
            _utc(row.created_at), _utc(row.expires_at), _utc(row.last_used_at),  # type: ignore[arg-type]
        )  # fmt: skip


class UserRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    # -- users ----------------------------------------------------------------------------------

    def add(self, record: UserRecord) -> None:
        self.session.add(
            UserRow(id=record.id, name=record.name, role=record.role,
                    password_hash=record.password_hash, created_at=record.created_at)
        )  # fmt: skip
        self.session.flush()

    def get(self, user_id: str) -> UserRecord | None:
        row = self.session.get(UserRow, user_id)
        return UserRecord.from_row(row) if row else None

    def by_name(self, name: str) -> UserRecord | None:
        row = self.session.scalar(select(UserRow).where(UserRow.name == name))
        return UserRecord.from_row(row) if row else None

    def list(self) -> list[UserRecord]:
        rows = self.session.scalars(select(UserRow).order_by(UserRow.name))
        return [UserRecord.from_row(r) for r in rows]

    def count(self, role: str | None = None) -> int:
        query = select(func.count()).select_from(UserRow)
        if role is not None:
            query = query.where(UserRow.role == role)
        return int(self.session.scalar(query) or 0)

    def update(self, user_id: str, **fields: object) -> UserRecord:
        row = self.session.get(UserRow, user_id)
        if row is None:
            raise KeyError(user_id)
        for key, value in fields.items():
            setattr(row, key, value)
        self.session.flush()
        return UserRecord.from_row(row)

    def remove(self, user_id: str) -> None:
        """The user and their tokens; the labs they owned go to the admins (no owner)."""
        self.session.execute(update(LabRow).where(LabRow.owner_id == user_id).values(owner_id=None))
        self.session.execute(delete(TokenRow).where(TokenRow.user_id == user_id))
        self.session.execute(delete(UserRow).where(UserRow.id == user_id))

    # -- tokens ---------------------------------------------------------------------------------

    def add_token(self, record: TokenRecord) -> None:
        self.session.add(
            TokenRow(id=record.id, user_id=record.user_id, kind=record.kind, name=record.name,
                     digest=record.digest, created_at=record.created_at,
                     expires_at=record.expires_at, last_used_at=record.last_used_at)
        )  # fmt: skip
        self.session.flush()

    def token(self, token_id: str) -> TokenRecord | None:
        row = self.session.get(TokenRow, token_id)
        return TokenRecord.from_row(row) if row else None

    def tokens(self, user_id: str, kind: str | None = None) -> list[TokenRecord]:
        query = select(TokenRow).where(TokenRow.user_id == user_id).order_by(TokenRow.created_at)
        if kind is not None:
            query = query.where(TokenRow.kind == kind)
        return [TokenRecord.from_row(r) for r in self.session.scalars(query)]

    def touch_token(self, token_id: str, when: datetime) -> None:
        row = self.session.get(TokenRow, token_id)
        if row is not None:
            row.last_used_at = when

    def remove_token(self, token_id: str) -> None:
        self.session.execute(delete(TokenRow).where(TokenRow.id == token_id))

    def remove_expired(self, now: datetime) -> int:
        done = self.session.execute(delete(TokenRow).where(TokenRow.expires_at < now))
        return int(done.rowcount or 0)  # type: ignore[attr-defined]
