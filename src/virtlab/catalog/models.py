"""ORM tables. Change them only together with a new Alembic revision in ``migrations/``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ImageRow(Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True, index=True)
    kind: Mapped[str] = mapped_column(String(16))  # disk | cdrom
    format: Mapped[str] = mapped_column(String(16))  # format of the stored file
    source_format: Mapped[str] = mapped_column(String(16))  # format it arrived in
    source_variant: Mapped[str] = mapped_column(String(64), default="")
    source_name: Mapped[str] = mapped_column(String(255), default="")  # upload's file name
    wrappers: Mapped[str] = mapped_column(String(64), default="")  # e.g. "gzip,ova"
    virtual_size: Mapped[int] = mapped_column(BigInteger)
    actual_size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))  # of the stored file
    source_sha256: Mapped[str] = mapped_column(String(64), default="")  # of the bytes uploaded
    path: Mapped[str] = mapped_column(String(1024))  # relative to the images directory
    origin: Mapped[str] = mapped_column(String(16))  # custom (uploaded) | base (found on disk)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
