"""A host whose facts cannot be read is down until it answers again (``HostService.show``).

A real libvirtd (``support/libvirt_hosts.py``) is frozen with SIGSTOP: it accepts connections
but answers nothing, as a hung host does. The server reads facts with a short
``VIRTLAB_HOST_OPEN_TIMEOUT``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

pytest.importorskip(
    "libvirt", reason="libvirt-python is not installed: pip install -e '.[libvirt]'"
)

from support.hosts_server import host_is, hosts_server, libvirt_hosts, needs_libvirtd, watch
from support.libvirt_hosts import LibvirtHost
from support.server import Server

pytestmark = needs_libvirtd
OPEN_TIMEOUT = 2


@pytest.fixture(scope="module")
def host() -> Iterator[LibvirtHost]:
    with libvirt_hosts("vhf-", "f1") as (f1,):
        yield f1


@pytest.fixture(scope="module")
def srv(host: LibvirtHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with host f1 added, reading facts with a short timeout."""
    env = {"VIRTLAB_HOST_OPEN_TIMEOUT": str(OPEN_TIMEOUT)}
    with hosts_server(tmp_path_factory, [host], env=env, image=False) as (server, _):
        yield server


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
        shown, _ = watch(srv, show_frozen, host_is("f1", "down"), 60)
        assert not shown["reachable"], shown
        assert f"did not answer within {OPEN_TIMEOUT} s when its facts were read" in shown["reason"]
        assert "check its libvirtd" in shown["reason"]
        with srv.client() as api:  # until it answers again, every view says so
            listed = {h["name"]: h for h in api.get("/api/hosts").json()}
            assert not listed["f1"]["reachable"] and listed["f1"]["reason"] == shown["reason"]
            assert listed["local"]["reachable"]
    finally:
        _, resumed = watch(srv, lambda: os.kill(pid, signal.SIGCONT), host_is("f1", "up"), 120)
    assert resumed[-1]["change"] == "up"
    with srv.client() as api:
        shown = api.get("/api/hosts/f1").json()
        assert shown["reachable"] and shown["reason"] == "", shown
        assert shown["facts"]["memory_mb"] > 0
