"""Two running nodes on a server of their own, made through the REST API, for link tests.

::

    @pytest.fixture(scope="module")
    def pair(tmp_path_factory):
        with api_pair(tmp_path_factory, ("r1", "r2")) as (server, r1, r2):
            yield server, r1, r2

The nodes boot the tiny test disk with 128 MiB and two NICs; every QEMU is killed and the
server stopped when the block ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from support.bootdisk import boot_disk
from support.server import Server

__all__ = ["api_pair"]


@contextlib.contextmanager
def api_pair(
    tmp_path_factory: pytest.TempPathFactory, names: tuple[str, str], **settings: Any
) -> Iterator[tuple[Server, dict, dict]]:
    """``settings`` go into each ``POST /api/nodes`` body (``vnc=False``, say)."""
    server = Server(tmp_path_factory.mktemp("data")).start()
    raw = boot_disk(tmp_path_factory)
    try:
        with server.client() as client:
            reply = client.put("/api/images/boot.img", content=raw.read_bytes())
            assert reply.status_code == 201, reply.text
            image = reply.json()["name"]
            nodes = []
            for name in names:
                body = {"name": name, "image": image, "ram_mb": 128, "nics": 2, **settings}
                made = client.post("/api/nodes", json=body)
                assert made.status_code == 201, made.text
                started = client.post(f"/api/nodes/{made.json()['id']}/start")
                assert started.status_code == 200, started.text
                nodes.append(started.json())
        yield server, nodes[0], nodes[1]
    finally:
        server.kill_nodes()
        server.stop()
