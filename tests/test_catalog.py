"""The catalog: migrations, and one contract suite run against SQLite and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.exc import IntegrityError

from support.postgres import PostgresServer
from support.qimg import convert, patterned_raw
from virtlab.catalog import Catalog, ImageRecord, ImageRepository
from virtlab.catalog.models import Base


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Catalog]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres").url
    catalog = Catalog(url)
    catalog.migrate()
    try:
        yield catalog
    finally:
        if request.param == "postgresql":
            with catalog.engine.begin() as conn:
                Base.metadata.drop_all(conn)
                conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
        catalog.dispose()


def _record(name: str, **changes: object) -> ImageRecord:
    fields: dict = dict(
        name=name, kind="disk", format="qcow2", source_format="vmdk",
        source_variant="monolithicSparse", source_name=f"{name}.vmdk", wrappers="gzip",
        virtual_size=3 << 40, actual_size=1 << 20, sha256="a" * 64, source_sha256="b" * 64,
        path=f"custom/{name}", origin="custom", created_at=datetime(2026, 11, 25, 12, tzinfo=UTC),
    )  # fmt: skip
    fields.update(changes)
    return ImageRecord(**fields)


def test_the_migrations_build_exactly_the_models(catalog: Catalog) -> None:
    catalog.migrate()  # a second run changes nothing
    with catalog.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_records_round_trip(catalog: Catalog) -> None:
    record = _record("r1.qcow2")
    with catalog.session() as session:
        ImageRepository(session).add(record)
    with catalog.session() as session:
        repo = ImageRepository(session)
        assert repo.get("r1.qcow2") == record  # sizes past 2 GiB and the time zone survive
        assert repo.list() == [record]
        assert repo.names() == {"r1.qcow2"}


def test_a_name_is_unique(catalog: Catalog) -> None:
    with catalog.session() as session:
        ImageRepository(session).add(_record("same"))
    with pytest.raises(IntegrityError), catalog.session() as session:
        ImageRepository(session).add(_record("same", path="custom/other"))
    with catalog.session() as session:
        assert [r.path for r in ImageRepository(session).list()] == ["custom/same"]


def test_update_and_remove(catalog: Catalog) -> None:
    with catalog.session() as session:
        ImageRepository(session).add(_record("x"))
    with catalog.session() as session:
        ImageRepository(session).update("x", format="vmdk", sha256="c" * 64)
    with catalog.session() as session:
        repo = ImageRepository(session)
        got = repo.get("x")
        assert got is not None and (got.format, got.sha256) == ("vmdk", "c" * 64)
        assert repo.remove("x") is True
        assert repo.remove("x") is False
        assert repo.get("x") is None


def test_a_failed_transaction_leaves_nothing(catalog: Catalog) -> None:
    with pytest.raises(RuntimeError), catalog.session() as session:
        ImageRepository(session).add(_record("half"))
        raise RuntimeError("the file move failed")
    with catalog.session() as session:
        assert ImageRepository(session).list() == []


def test_the_server_runs_on_postgresql(
    make_server, postgres: PostgresServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    raw = patterned_raw(tmp_path / "r.raw", 8, data_mib=1)
    vdi = convert(raw, tmp_path / "r.vdi", "vdi")
    srv = make_server({"VIRTLAB_DATABASE_URL": postgres.url})
    try:
        with srv.client() as client:
            created = client.put("/api/images/r.vdi", content=vdi.read_bytes())
            assert created.status_code == 201, created.text
        srv.stop()
        assert not (srv.data_dir / "catalog.sqlite3").exists()
        srv.start()
        with srv.client() as client:
            assert [i["name"] for i in client.get("/api/images").json()] == [created.json()["name"]]
    finally:
        srv.stop()
        cleanup = Catalog(postgres.url)
        with cleanup.engine.begin() as conn:
            Base.metadata.drop_all(conn)
            conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
        cleanup.dispose()


def test_hosts_the_local_host_exists_and_nodes_default_to_it(catalog: Catalog) -> None:
    from virtlab.catalog.hosts import LOCAL_HOST_NAME, HostRecord, HostRepository
    from virtlab.catalog.nodes import NodeRecord, NodeRepository

    with catalog.session() as session:
        hosts = HostRepository(session)
        assert [h.name for h in hosts.list()] == [LOCAL_HOST_NAME]
        hosts.add(HostRecord("h1", "qemu+tcp://127.0.0.1:1/system", "up",
                             datetime(2026, 11, 26, tzinfo=UTC), {"cpus": 2}))  # fmt: skip
        NodeRepository(session).add(NodeRecord(
            id="n1", name="r1", image="i", cpus=1, ram_mb=256, disk_bus="virtio", nics=1,
            nic_model="e1000", serial=True, vnc=True, state="stopped",
            created_at=datetime(2026, 11, 26, tzinfo=UTC), host="h1",
        ))  # fmt: skip
    with catalog.session() as session:
        hosts = HostRepository(session)
        assert hosts.get("h1").facts == {"cpus": 2}  # type: ignore[union-attr]
        assert hosts.by_uri("qemu+tcp://127.0.0.1:1/system").name == "h1"  # type: ignore[union-attr]
        assert hosts.node_counts() == {"h1": 1} and hosts.ram_promised() == {"h1": 256}
        assert hosts.update("h1", drained=True).drained
    with pytest.raises(IntegrityError), catalog.session() as session:
        HostRepository(session).add(HostRecord("h2", "qemu+tcp://127.0.0.1:1/system", "up",
                                               datetime(2026, 11, 26, tzinfo=UTC)))  # fmt: skip
    with pytest.raises(IntegrityError), catalog.session() as session:
        HostRepository(session).remove("h1")  # it has a node
    with catalog.session() as session:
        assert [h.name for h in HostRepository(session).list()] == [LOCAL_HOST_NAME, "h1"]
