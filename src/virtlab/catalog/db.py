"""The database engine, its migrations, and sessions.

SQLite (the default) runs in WAL mode: readers never wait for a writer, and a writer waits for
another one (another process, or ``sqlite3`` at a shell) up to ``busy_timeout`` seconds. That
wait blocks the thread it happens in, so code on the event loop writes through
:meth:`Catalog.write`, which runs the session in a worker thread. A lock held past the timeout
is :class:`~virtlab.errors.CatalogBusy` (503, nothing changed); a full disk is
:class:`~virtlab.errors.InsufficientStorage` (507, nothing changed).

A full disk must not keep the server from recording what happened (a node paused because its
disk filled DATA up): a SQLite catalog keeps a reserve file beside it
(``.catalog-reserve``, 4 MiB, made while there is room), which :meth:`Catalog.write` gives
back to the file system when a write finds the disk full, then tries once more.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from virtlab.errors import CatalogBusy, InsufficientStorage

__all__ = ["RESERVE_BYTES", "Catalog"]

log = logging.getLogger("virtlab.catalog")

RESERVE_BYTES = 4 << 20  # room kept for the catalog to record changes on a full disk

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

    def __init__(
        self, url: str, *, busy_timeout: float = 30.0, reserve_bytes: int = RESERVE_BYTES
    ) -> None:
        self.url = _normalise(url)
        self.busy_timeout = busy_timeout
        self.reserve_bytes = reserve_bytes
        kwargs: dict = {}
        if self.url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": busy_timeout}
            # Keep a connection per thread that may query at once (request workers, the event
            # loop, asyncio's threads): a connection made anew costs its pragmas each time.
            if not _in_memory(self.url):
                kwargs.update(pool_size=20, max_overflow=20)
        self.engine: Engine = create_engine(self.url, **kwargs)
        self._postgres = self.url.startswith("postgresql")
        # Commits that need not wait for the disk (see ``session``): on SQLite a second engine
        # over the same file whose connections run synchronous=NORMAL; on PostgreSQL the same
        # engine, with synchronous_commit off for the transaction.
        self._relaxed_engine = self.engine
        if self.url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
            if not _in_memory(self.url):  # a second engine would open a second database
                self._relaxed_engine = create_engine(self.url, **kwargs)
                event.listen(self._relaxed_engine, "connect", _sqlite_relaxed_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._relaxed_sessions = sessionmaker(self._relaxed_engine, expire_on_commit=False)
        database = self.engine.url.database if self.url.startswith("sqlite") else None
        self.reserve: Path | None = (
            Path(database).parent / ".catalog-reserve"
            if database and database != ":memory:" and reserve_bytes > 0
            else None
        )

    def migrate(self) -> None:
        """Bring the schema to the latest revision. A catalog already there (every start but
        the first) is recognised by one query, without loading alembic (about a third of the
        server's start-up imports); any other state goes through alembic's upgrade."""
        if self.at_head():
            return
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option(
            "script_location", str(resources.files("virtlab.catalog") / "migrations")
        )
        cfg.attributes["connection_url"] = self.url
        with self.engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")

    def at_head(self) -> bool:
        """Whether the database records the latest migration as its only revision."""
        head = head_revision()
        if head is None:
            return False
        try:
            with self.engine.connect() as connection:
                rows = connection.exec_driver_sql("SELECT version_num FROM alembic_version").all()
        except DBAPIError:  # no such table yet: a new database
            return False
        return [tuple(row) for row in rows] == [(head,)]

    @contextmanager
    def session(self, *, durable: bool = True) -> Iterator[Session]:
        """A session whose transaction commits when the block ends without an error.

        A commit waits until the disk has it (SQLite WAL with synchronous=FULL), so that rows
        and the files they stand for agree even after a power cut. ``durable=False`` is for
        runtime state that a restarted server derives again anyway, such as a node's state
        (the start-up re-adoption asks the processes): its commit survives a killed server,
        not a power cut, and does not wait for the disk, which takes milliseconds per commit
        on a small host, twice in every node start.

        Blocks the calling thread while another writer holds the database; on the event loop,
        write through :meth:`write` instead."""
        try:
            if durable:
                with self._sessions.begin() as session:
                    yield session
                return
            with self._relaxed_sessions.begin() as session:
                if self._postgres:
                    session.execute(text("SET LOCAL synchronous_commit TO OFF"))
                yield session
        except OperationalError as exc:
            raise self._translate(exc) from exc

    async def write(self, work: Callable[[Session], T], *, durable: bool = True) -> T:
        """``work(session)`` in one transaction, in a worker thread: waiting for another
        writer's lock never blocks the event loop. On SQLite the transaction takes the write
        lock first (``BEGIN IMMEDIATE``), so a read-then-write never fails half-way because
        another writer went in between."""

        def attempt() -> T:
            with self.session(durable=durable) as session:
                if self.url.startswith("sqlite"):
                    session.connection().exec_driver_sql("BEGIN IMMEDIATE")
                return work(session)

        def run() -> T:
            try:
                result = attempt()
            except InsufficientStorage:
                if not self._release_reserve():
                    raise
                result = attempt()
            self.keep_reserve()
            return result

        return await asyncio.to_thread(run)

    def keep_reserve(self) -> None:
        """Make the reserve file if it is missing and the disk has room to spare for it."""
        if self.reserve is None or self.reserve.exists():
            return
        try:
            stat = os.statvfs(self.reserve.parent)
            if stat.f_bavail * stat.f_frsize < 4 * self.reserve_bytes:
                return
            part = self.reserve.with_name(f"{self.reserve.name}.part")
            with part.open("wb") as f:
                os.posix_fallocate(f.fileno(), 0, self.reserve_bytes)
            part.replace(self.reserve)
        except OSError as exc:
            log.warning("could not keep the catalog's reserve %s: %s", self.reserve, exc)

    def _release_reserve(self) -> bool:
        if self.reserve is None or not self.reserve.exists():
            return False
        log.warning(
            "the data directory's disk is full: gave back the catalog's reserve (%d MiB) to "
            "record a change; free some space", self.reserve_bytes >> 20,
        )  # fmt: skip
        self.reserve.unlink(missing_ok=True)
        return True

    def _translate(self, exc: OperationalError) -> Exception:
        said = str(exc.orig) if exc.orig is not None else str(exc)
        if any(marker in said for marker in _LOCKED):
            return CatalogBusy(
                f"the catalog database stayed locked by another writer for more than "
                f"{self.busy_timeout:g} s ({said}); nothing was changed. Try again in a moment; "
                "if it lasts, find what holds the lock (a `sqlite3` shell or a backup left open "
                "on DATA/catalog.sqlite3: `fuser DATA/catalog.sqlite3`)",
                retry_after=max(1, round(self.busy_timeout / 2)),
            )
        if any(marker in said for marker in _FULL):
            return InsufficientStorage(
                f"the catalog database could not be written ({said}): the data directory's "
                "disk is full; nothing was changed. Free some space and try again"
            )
        return exc

    def dispose(self) -> None:
        self.engine.dispose()
        if self._relaxed_engine is not self.engine:
            self._relaxed_engine.dispose()


_REVISION = re.compile(r"^revision\s*=\s*[\"']([^\"']+)[\"']", re.M)
_DOWN_REVISION = re.compile(r"^down_revision\s*=\s*(?:None|[\"']([^\"']+)[\"'])", re.M)


@functools.cache
def head_revision() -> str | None:
    """The newest migration's revision, read from the migration files' ``revision`` and
    ``down_revision`` lines (alembic's own reading of them imports alembic); ``None`` if they
    do not make one straight line of revisions, and alembic has to decide."""
    revisions: dict[str, str | None] = {}
    versions = resources.files("virtlab.catalog") / "migrations" / "versions"
    for entry in versions.iterdir():
        if not entry.name.endswith(".py"):
            continue
        source = entry.read_text()
        revision, down = _REVISION.search(source), _DOWN_REVISION.search(source)
        if revision is None or down is None:
            return None
        revisions[revision.group(1)] = down.group(1)
    parents = set(revisions.values())
    heads = [revision for revision in revisions if revision not in parents]
    linear = len(parents) == len(revisions)  # no branch, no merge: each parent once
    return heads[0] if len(heads) == 1 and linear else None


def _in_memory(url: str) -> bool:
    bare = url.rstrip("/") in ("sqlite:", "sqlite+pysqlite:")
    return bare or ":memory:" in url or "mode=memory" in url


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_relaxed_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    _sqlite_pragmas(dbapi_connection, _record)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across a crash of the process
    cursor.close()
