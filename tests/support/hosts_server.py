"""Real libvirtd "hosts" and a real ``virtlab serve`` that has them, for the tests of nodes on
libvirt hosts (``test_hosts_*.py``, ``test_ui_hosts.py``), and the helpers those tests share.

::

    pytestmark = needs_libvirtd

    @pytest.fixture(scope="module")
    def hosts() -> Iterator[tuple[LibvirtHost, ...]]:
        with libvirt_hosts("vhx-", "h1", "h2", tls=("h2",)) as started:
            yield started

    @pytest.fixture(scope="module")
    def srv(hosts, tmp_path_factory) -> Iterator[tuple[Server, str]]:
        with hosts_server(tmp_path_factory, hosts) as (server, image):
            yield server, image

Each module starts hosts of its own and keeps them to itself: its tests stop and freeze their
libvirtd, count the volumes in their pools and the QEMUs they run, which another module's
server on the same daemon would change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from support.bootdisk import boot_disk
from support.fake_peers import short_dir
from support.libvirt_hosts import LibvirtHost, have_libvirtd
from support.server import Server

__all__ = [
    "add_host",
    "cli",
    "host_is",
    "hosts_server",
    "libvirt_hosts",
    "make_node",
    "needs_libvirtd",
    "node_is",
    "refused",
    "watch",
]

NEEDS = "apt-get install libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients"
needs_libvirtd = pytest.mark.skipif(not have_libvirtd(), reason=NEEDS)
VIRTLAB = str(Path(sys.executable).with_name("virtlab"))

Event = dict[str, Any]


@contextlib.contextmanager
def libvirt_hosts(
    prefix: str, *names: str, tls: Collection[str] = ()
) -> Iterator[tuple[LibvirtHost, ...]]:
    """A libvirtd for each of ``names`` (plain TCP, or TLS for those in ``tls``), in a short
    scratch folder named ``prefix…``; each is stopped, with its QEMUs, when the block ends."""
    with short_dir(prefix) as root, contextlib.ExitStack() as stack:
        yield tuple(
            stack.enter_context(LibvirtHost.start(root / name, tls=name in tls)) for name in names
        )


@contextlib.contextmanager
def hosts_server(
    tmp_path_factory: pytest.TempPathFactory,
    hosts: Sequence[LibvirtHost] = (),
    *,
    env: dict[str, str] | None = None,
    image: bool = True,
) -> Iterator[tuple[Server, str]]:
    """A server under TCG, with the boot disk imported (its image's name; ``""`` without
    ``image``) and ``hosts`` added by their names. Every node's QEMU is killed at the end."""
    # TCG everywhere: this machine's libvirt offers a KVM that cannot run guests (nested).
    server = Server(tmp_path_factory.mktemp("data"), env={"VIRTLAB_ACCEL": "tcg", **(env or {})})
    server.start()
    try:
        name = ""
        with server.client() as api:
            if image:
                raw = boot_disk(tmp_path_factory).read_bytes()
                made = api.put("/api/images/boot.img", content=raw)
                assert made.status_code == 201, made.text
                name = made.json()["name"]
            for host in hosts:
                add_host(api, host)
        yield server, name
    finally:
        server.kill_nodes()
        server.stop()


def add_host(api: httpx.Client, host: LibvirtHost) -> dict:
    """Add ``host`` by its name; a TLS one with its client certificate folder."""
    body = {"name": host.name, "uri": host.uri}
    if host.tls:
        body = {"name": host.name, "uri": host.uri.split("?")[0], "tls_cert": str(host.client_pki)}
    added = api.post("/api/hosts", json=body)
    assert added.status_code == 201, added.text
    return added.json()


def cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """``virtlab ARGS`` against ``server``, as its admin."""
    env = {**os.environ, **server.cli_env, "COLUMNS": "250"}
    return subprocess.run([VIRTLAB, *args], capture_output=True, text=True, timeout=300, env=env)


def make_node(api: httpx.Client, image: str, name: str, **fields: object) -> dict:
    """A node of 128 MB from ``image`` (stopped), with ``fields`` such as ``host``."""
    made = api.post("/api/nodes", json={"name": name, "image": image, "ram_mb": 128, **fields})
    assert made.status_code == 201, made.text
    return made.json()


def refused(reply: httpx.Response, status: int, *words: str) -> str:
    """Assert ``reply`` is a refusal with ``status`` whose detail has every one of ``words``."""
    assert reply.status_code == status, reply.text
    detail = reply.json()["detail"]
    for word in words:
        assert word in detail, detail
    return detail


def watch(
    server: Server, then: Callable[[], object], until: Callable[[Event], bool], timeout: float = 180
) -> tuple[Any, list[Event]]:
    """Subscribe to the server's events, do ``then`` (in a thread), and read events until one
    is ``until``; what ``then`` returned, and the events read."""

    async def run() -> tuple[Any, list[Event]]:
        seen: list[Event] = []
        async with connect(server.ws_url("/api/events"), additional_headers=server.headers) as ws:
            done = await asyncio.to_thread(then)

            async def loop() -> None:
                while not seen or not until(seen[-1]):
                    seen.append(json.loads(await ws.recv()))

            await asyncio.wait_for(loop(), timeout)
        return done, seen

    return asyncio.run(run())


def node_is(name: str, state: str) -> Callable[[Event], bool]:
    """Until: an event says node ``name`` is ``state``."""
    return lambda e: e["kind"] == "node" and e["name"] == name and e["state"] == state


def host_is(name: str, state: str) -> Callable[[Event], bool]:
    """Until: an event says host ``name`` is ``state`` (``up`` or ``down``)."""
    return lambda e: e["kind"] == "host" and e["name"] == name and e["state"] == state
