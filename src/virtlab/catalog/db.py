"""The database engine, its migrations, and sessions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["Catalog"]


def _normalise(url: str) -> str:
    # `postgresql://` means psycopg 3 here (SQLAlchemy's default would be psycopg2).
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


class Catalog:
    """Owns the engine; ``migrate()`` brings the schema to the latest revision."""

    def __init__(self, url: str) -> None:
        self.url = _normalise(url)
        kwargs: dict = {}
        if self.url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
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
    def session(self, *, durable: bool = True) -> Iterator[Session]:
        """A session whose transaction commits when the block ends without an error.

        A commit waits until the disk has it (SQLite WAL with synchronous=FULL), so that rows
        and the files they stand for agree even after a power cut. ``durable=False`` is for
        runtime state that a restarted server derives again anyway, such as a node's state
        (the start-up re-adoption asks the processes): its commit survives a killed server,
        not a power cut, and does not wait for the disk, which takes milliseconds per commit
        on a small host, twice in every node start.
        """
        if durable:
            with self._sessions.begin() as session:
                yield session
            return
        with self._relaxed_sessions.begin() as session:
            if self._postgres:
                session.execute(text("SET LOCAL synchronous_commit TO OFF"))
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
        if self._relaxed_engine is not self.engine:
            self._relaxed_engine.dispose()


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
