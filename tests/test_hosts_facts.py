"""A host whose facts cannot be read is down until it answers again (``HostService.show``).

A real libvirtd (``support/libvirt_hosts.py``) is frozen with SIGSTOP: it accepts connections
but answers nothing, as a hung host does. The server reads facts with a short
``VIRTLAB_HOST_OPEN_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable, Iterator

import pytest
from websockets.asyncio.client import connect

pytest.importorskip(
    "libvirt", reason="libvirt-python is not installed: pip install -e '.[libvirt]'"
)

from support.fake_peers import short_dir
from support.libvirt_hosts import LibvirtHost, have_libvirtd
from support.server import Server

NEEDS = "apt-get install libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients"
pytestmark = pytest.mark.skipif(not have_libvirtd(), reason=NEEDS)
OPEN_TIMEOUT = 2


@pytest.fixture(scope="module")
def host() -> Iterator[LibvirtHost]:
    with short_dir("vhf-") as root, LibvirtHost.start(root / "f1") as f1:
        yield f1


@pytest.fixture(scope="module")
def srv(host: LibvirtHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with host f1 added, reading facts with a short timeout."""
    env = {"VIRTLAB_ACCEL": "tcg", "VIRTLAB_HOST_OPEN_TIMEOUT": str(OPEN_TIMEOUT)}
    server = Server(tmp_path_factory.mktemp("data"), env=env).start()
    try:
        with server.client() as api:
            added = api.post("/api/hosts", json={"name": "f1", "uri": host.uri})
            assert added.status_code == 201, added.text
        yield server
    finally:
        server.kill_nodes()
        server.stop()


async def _events_until(
    server: Server, then: Callable[[], object], until: Callable[[dict], bool], timeout: float
) -> list[dict]:
    """Subscribe to the events, do ``then`` (in a thread), and read events until ``until``."""
    seen: list[dict] = []
    async with connect(server.ws_url("/api/events"), additional_headers=server.headers) as ws:
        done = await asyncio.to_thread(then)

        async def loop() -> list[dict]:
            while not seen or not until(seen[-1]):
                seen.append(json.loads(await ws.recv()))
            return seen

        await asyncio.wait_for(loop(), timeout)
    seen.insert(0, {"then": done})
    return seen


def _host_is(state: str) -> Callable[[dict], bool]:
    return lambda e: e["kind"] == "host" and e["name"] == "f1" and e["state"] == state


def test_a_host_whose_facts_cannot_be_read_is_down_until_it_answers(
    srv: Server, host: LibvirtHost
) -> None:
    assert host.daemon is not None
    pid = host.daemon.pid  # libvirtd itself: unshare and sh exec it
    with srv.client() as api:
        shown = api.get("/api/hosts/f1").json()
        assert shown["reachable"] and shown["reason"] == "" and shown["facts"]["cpus"] >= 1

    def show_frozen() -> dict:
        os.kill(pid, signal.SIGSTOP)
        with srv.client() as api:
            reply = api.get("/api/hosts/f1")
            assert reply.status_code == 200, reply.text
            return reply.json()

    try:
        seen = asyncio.run(_events_until(srv, show_frozen, _host_is("down"), 60))
        shown = seen[0]["then"]
        assert not shown["reachable"], shown
        assert f"did not answer within {OPEN_TIMEOUT} s when its facts were read" in shown["reason"]
        assert "check its libvirtd" in shown["reason"]
        with srv.client() as api:  # until it answers again, every view says so
            listed = {h["name"]: h for h in api.get("/api/hosts").json()}
            assert not listed["f1"]["reachable"] and listed["f1"]["reason"] == shown["reason"]
            assert listed["local"]["reachable"]
    finally:
        resumed = asyncio.run(
            _events_until(srv, lambda: os.kill(pid, signal.SIGCONT), _host_is("up"), 120)
        )
    assert resumed[-1]["change"] == "up"
    with srv.client() as api:
        shown = api.get("/api/hosts/f1").json()
        assert shown["reachable"] and shown["reason"] == "", shown
        assert shown["facts"]["memory_mb"] > 0
