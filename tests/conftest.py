"""Shared fixtures: real servers on loopback over temporary data directories."""

from __future__ import annotations

import compileall
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import virtlab
from support.bootdisk import boot_disk
from support.server import Server


def pytest_configure(config: pytest.Config) -> None:
    """With PYTHONDONTWRITEBYTECODE set (as in this lab's shells), every server and CLI command
    a test starts, each a new interpreter, would compile all of virtlab's modules from source
    again: about 0.4 s of CPU per server start (docs/benchmarks.md, "Start-up"). Compile them
    once per session, beside the sources (``__pycache__``, git-ignored), where every interpreter
    reads them; an up-to-date file is only checked (its source's mtime and size)."""
    if sys.flags.dont_write_bytecode:
        compileall.compile_dir(Path(virtlab.__file__).parent, quiet=1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for a whole test module (tests must not depend on each other's images)."""
    srv = Server(tmp_path_factory.mktemp("data")).start()
    try:
        yield srv
    finally:
        srv.kill_nodes()
        srv.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator:
    """A factory for servers of a test's own, with settings of its own (``env``)."""
    started: list[Server] = []

    def make(env: dict[str, str] | None = None, data_dir: Path | None = None) -> Server:
        srv = Server(data_dir or tmp_path / "data", env=env or {})
        started.append(srv)
        return srv.start()

    yield make
    for srv in started:
        srv.kill_nodes()
        srv.stop()


@pytest.fixture(scope="module")
def booted_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A server of the module's own with the tiny boot disk imported, and that image's name.
    Every node's QEMU is killed when the module is done."""
    srv = Server(tmp_path_factory.mktemp("data")).start()
    raw = boot_disk(tmp_path_factory)
    try:
        with srv.client() as client:
            image = client.put("/api/images/boot.img", content=raw.read_bytes()).json()["name"]
        yield srv, image
    finally:
        srv.kill_nodes()
        srv.stop()
