"""Catalog start-up: a catalog at the newest migration is recognised without alembic; any
other catalog (new, older, or at a revision this code does not know) goes through alembic."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

import virtlab
from virtlab.catalog import Catalog
from virtlab.catalog.db import head_revision
from virtlab.catalog.models import Base


def _config(catalog: Catalog) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("virtlab.catalog") / "migrations"))
    cfg.attributes["connection_url"] = catalog.url
    return cfg


def _upgrade(catalog: Catalog, revision: str) -> None:
    """alembic itself, as ``Catalog.migrate`` runs it, to ``revision`` only."""
    cfg = _config(catalog)
    with catalog.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def _revision(catalog: Catalog) -> str | None:
    with catalog.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    made = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    yield made
    made.dispose()


def test_the_head_read_from_the_migration_files_is_alembics(catalog: Catalog) -> None:
    assert head_revision() == ScriptDirectory.from_config(_config(catalog)).get_current_head()


def test_an_older_catalog_is_upgraded(catalog: Catalog) -> None:
    head = head_revision()
    assert head is not None
    previous = ScriptDirectory.from_config(_config(catalog)).get_revision(head).down_revision
    assert isinstance(previous, str)
    _upgrade(catalog, previous)
    assert _revision(catalog) == previous
    assert not catalog.at_head()

    catalog.migrate()

    assert _revision(catalog) == head
    assert catalog.at_head()
    with catalog.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_a_new_catalog_is_built_by_the_migrations(catalog: Catalog) -> None:
    assert not catalog.at_head()
    catalog.migrate()
    assert _revision(catalog) == head_revision()
    assert catalog.at_head()


def test_a_catalog_at_an_unknown_revision_is_refused_by_alembic(catalog: Catalog) -> None:
    catalog.migrate()
    with catalog.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'ffff'")
    assert not catalog.at_head()
    with pytest.raises(CommandError, match="ffff"):
        catalog.migrate()


def test_a_catalog_at_the_head_starts_without_loading_alembic(catalog: Catalog) -> None:
    catalog.migrate()
    code = (
        "import sys\n"
        "from virtlab.catalog import Catalog\n"
        f"catalog = Catalog({catalog.url!r})\n"
        "catalog.migrate()\n"
        "assert catalog.at_head()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))\n"
    )
    src = str(Path(virtlab.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
