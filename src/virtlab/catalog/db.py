"""The database engine, its migrations, and sessions.

SQLite (the default) runs in WAL mode: readers never wait for a writer, and a writer waits for
another one (another process, or ``sqlite3`` at a shell) up to ``busy_timeout`` seconds. That
wait blocks the thread it happens in, so code on the event loop writes through
:meth:`Catalog.write`, which runs the session in a worker thread. A lock held past the timeout
is :class:`~virtlab.errors.CatalogBusy` (503, nothing changed); a full disk is
:class:`~virtlab.errors.InsufficientStorage` (507, nothing changed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from typing import TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from virtlab.errors import CatalogBusy, InsufficientStorage

__all__ = ["Catalog"]

T = TypeVar("T")

_LOCKED = ("database is locked", "database table is locked", "database is busy")
_FULL = ("database or disk is full", "disk I/O error")


def _normalise(url: str) -> str:
    # `postgresql://` means psycopg 3 here (SQLAlchemy's default would be psycopg2).
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


class Catalog:
    """Owns the engine; ``migrate()`` brings the schema to the latest revision."""

    def __init__(self, url: str, *, busy_timeout: float = 30.0) -> None:
        self.url = _normalise(url)
        self.busy_timeout = busy_timeout
        kwargs: dict = {}
        if self.url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": busy_timeout}
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def migrate(self) -> None:
        cfg = Config()
        cfg.set_main_option(
            "script_location", str(resources.files("virtlab.catalog") / "migrations")
        )
        cfg.attributes["connection_url"] = self.url
        with self.engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits when the block ends without an error.

        Blocks the calling thread while another writer holds the database; on the event loop,
        write through :meth:`write` instead."""
        try:
            with self._sessions.begin() as session:
                yield session
        except OperationalError as exc:
            raise self._translate(exc) from exc

    async def write(self, work: Callable[[Session], T]) -> T:
        """``work(session)`` in one transaction, in a worker thread: waiting for another
        writer's lock never blocks the event loop. On SQLite the transaction takes the write
        lock first (``BEGIN IMMEDIATE``), so a read-then-write never fails half-way because
        another writer went in between."""

        def run() -> T:
            with self.session() as session:
                if self.url.startswith("sqlite"):
                    session.connection().exec_driver_sql("BEGIN IMMEDIATE")
                return work(session)

        return await asyncio.to_thread(run)

    def _translate(self, exc: OperationalError) -> Exception:
        text = str(exc.orig) if exc.orig is not None else str(exc)
        if any(marker in text for marker in _LOCKED):
            return CatalogBusy(
                f"the catalog database stayed locked by another writer for more than "
                f"{self.busy_timeout:g} s ({text}); nothing was changed. Try again in a moment; "
                "if it lasts, find what holds the lock (a `sqlite3` shell or a backup left open "
                "on DATA/catalog.sqlite3: `fuser DATA/catalog.sqlite3`)",
                retry_after=max(1, round(self.busy_timeout / 2)),
            )
        if any(marker in text for marker in _FULL):
            return InsufficientStorage(
                f"the catalog database could not be written ({text}): the data directory's "
                "disk is full; nothing was changed. Free some space and try again"
            )
        return exc

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
