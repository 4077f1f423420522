"""The catalog database locked by another process (``BEGIN EXCLUSIVE`` from a ``sqlite3``
connection of the test's own) while API writes arrive (nodes, labs, images, links), and while a
node's QEMU dies.

A write waits for the lock in a worker thread, so the server keeps answering meanwhile, and
lands once the lock is released: none is lost. A lock held past the busy timeout is a 503 with
Retry-After and a message saying what to do; nothing is left half-done (no overlay without
its row, no image file without its row).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from support.catalog import assert_consistent
from support.qimg import patterned_raw
from support.server import Server


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """Hold the catalog's write lock from another connection (another process would do the
    same), as a backup tool or a `sqlite3` shell left in a transaction does."""
    conn = sqlite3.connect(data_dir / "catalog.sqlite3", isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def _until(condition: Callable[[], bool], timeout: float = 60) -> None:
    """Wait until ``condition()`` holds, checking it every few milliseconds."""
    deadline = time.monotonic() + timeout
    ready = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, "the awaited condition never held"
        ready.wait(0.005)


def _in_background(
    srv: Server, call: Callable[[httpx.Client], httpx.Response]
) -> tuple[threading.Thread, list]:
    """``call`` with a client of its own, in a thread; its response lands in the list."""
    result: list = []

    def run() -> None:
        with srv.client(timeout=120) as client:
            result.append(call(client))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


@pytest.fixture
def image(tmp_path: Path) -> bytes:
    return patterned_raw(tmp_path / "base.raw", 8, data_mib=1).read_bytes()


def test_writes_wait_for_the_lock_and_land_while_the_server_answers(  # type: ignore[no-untyped-def]
    make_server, tmp_path: Path, image: bytes
) -> None:
    data_dir = tmp_path / "data"
    srv: Server = make_server(data_dir=data_dir)
    with srv.client() as client:
        base = client.put("/api/images/base.raw", content=image).json()["name"]
        assert client.get("/api/nodes").status_code == 200  # the token's first use is noted
        # A machine (no bootable disk: the firmware waits) whose death the server must record.
        dying = client.post("/api/nodes", json={"name": "dies", "image": base, "ram_mb": 64})
        assert client.post("/api/nodes/dies/start").json()["state"] == "running"
    nodes_dir = data_dir / "nodes"
    dying_pid = int((nodes_dir / dying.json()["id"] / "qemu.pid").read_text())

    with _locked(data_dir), srv.client(timeout=120) as client:
        os.kill(dying_pid, signal.SIGKILL)  # its `crashed` waits for the lock, in the background
        node, node_result = _in_background(
            srv, lambda c: c.post("/api/nodes", json={"name": "n1", "image": base})
        )
        lab, lab_result = _in_background(srv, lambda c: c.post("/api/labs", json={"name": "l1"}))
        # The node's overlay is made; its row waits for the lock.
        _until(lambda: len(list(nodes_dir.glob("*/disk.qcow2"))) == 2)
        started = time.monotonic()
        health = client.get("/api/health")
        assert health.status_code == 200, "the event loop answers while writes wait"
        assert time.monotonic() - started < 5
        listed = client.get("/api/nodes")  # readers do not wait for a writer (WAL)
        assert listed.status_code == 200
        assert [(n["name"], n["state"]) for n in listed.json()] == [("dies", "running")]
        assert node.is_alive() and lab.is_alive(), "the writes wait for the lock"
    node.join(60)
    lab.join(60)
    assert node_result[0].status_code == 201, node_result[0].text
    assert lab_result[0].status_code == 201, lab_result[0].text
    with srv.client() as client:
        assert sorted(n["name"] for n in client.get("/api/nodes").json()) == ["dies", "n1"]
        assert "l1" in [lab["name"] for lab in client.get("/api/labs").json()]
        _until(lambda: client.get("/api/nodes/dies").json()["state"] == "crashed")
    made = {node_result[0].json()["id"], dying.json()["id"]}
    assert {p.name for p in nodes_dir.iterdir()} == made


def test_a_lock_held_past_the_timeout_is_a_503_and_leaves_nothing_half_done(  # type: ignore[no-untyped-def]
    make_server, tmp_path: Path, image: bytes
) -> None:
    data_dir = tmp_path / "data"
    srv: Server = make_server({"VIRTLAB_CATALOG_BUSY_TIMEOUT": "1.5"}, data_dir=data_dir)
    with srv.client() as client:
        base = client.put("/api/images/base.raw", content=image).json()["name"]
        assert client.get("/api/nodes").status_code == 200
        images = client.get("/api/images").json()

    with _locked(data_dir), srv.client() as client:
        refusals = [
            client.post("/api/nodes", json={"name": "n1", "image": base}),
            client.post("/api/labs", json={"name": "l1"}),
            client.put("/api/images/other.raw", content=image),
        ]
        for response in refusals:
            assert response.status_code == 503, response.text
            assert int(response.headers["Retry-After"]) >= 1
            detail = response.json()["detail"]
            assert "catalog database stayed locked" in detail, detail
            assert "nothing was changed" in detail and "Try again" in detail, detail
    assert list((data_dir / "nodes").iterdir()) == [], "no overlay without its row"
    assert_consistent(data_dir)  # no image file without its row, staging empty

    with srv.client() as client:  # nothing stands in the way of the same requests now
        assert client.get("/api/images").json() == images
        assert client.post("/api/nodes", json={"name": "n1", "image": base}).status_code == 201
        assert client.post("/api/labs", json={"name": "l1"}).status_code == 201
        assert client.put("/api/images/other.raw", content=image).status_code == 201
    srv.stop()
    assert_consistent(data_dir)


def test_link_changes_wait_off_the_event_loop_and_a_refusal_changes_nothing(  # type: ignore[no-untyped-def]
    make_server, tmp_path: Path, image: bytes
) -> None:
    """A link change (down, and a new link) on a locked catalog waits for the lock in a worker
    thread: /api/health answers promptly the whole time, then each is refused with a 503 that
    changed nothing (the link stays up, no second link), and goes through once the lock is gone."""
    data_dir = tmp_path / "data"
    timeout = 3.0
    srv: Server = make_server({"VIRTLAB_CATALOG_BUSY_TIMEOUT": f"{timeout:g}"}, data_dir=data_dir)
    with srv.client() as client:
        base = client.put("/api/images/base.raw", content=image).json()["name"]
        for name in ("a", "b"):
            made = client.post("/api/nodes", json={"name": name, "image": base, "nics": 2})
            assert made.status_code == 201, made.text
        created = client.post("/api/links", json={"a": "a:eth0", "b": "b:eth0"})
        assert created.status_code == 201, created.text
        link = created.json()
    down = {"state": "down"}
    second = {"a": "a:eth1", "b": "b:eth1"}

    with _locked(data_dir), srv.client() as client:
        started = time.monotonic()
        changes = [
            _in_background(srv, lambda c: c.patch(f"/api/links/{link['id']}", json=down)),
            _in_background(srv, lambda c: c.post("/api/links", json=second)),
        ]
        slowest = 0.0
        while pending := [thread for thread, _ in changes if thread.is_alive()]:
            asked = time.monotonic()
            assert client.get("/api/health").status_code == 200
            slowest = max(slowest, time.monotonic() - asked)
            pending[0].join(0.05)  # until it ends, or the next health check is due
        waited = time.monotonic() - started
    # Both changes waited out the busy timeout (one after the other: link changes are
    # serialised), and the event loop answered all along, never stalled for that long.
    assert waited >= 2 * timeout, waited
    assert slowest < timeout / 2, f"/api/health took {slowest:.2f} s while a link change waited"
    for _, result in changes:
        assert result[0].status_code == 503, result[0].text
        assert int(result[0].headers["Retry-After"]) >= 1
        detail = result[0].json()["detail"]
        assert "catalog database stayed locked" in detail and "nothing was changed" in detail

    with srv.client() as client:
        assert client.get(f"/api/links/{link['id']}").json()["state"] == "up"
        assert [x["id"] for x in client.get("/api/links").json()] == [link["id"]]
        assert client.patch(f"/api/links/{link['id']}", json=down).json()["state"] == "down"
        again = client.post("/api/links", json=second)
        assert again.status_code == 201, again.text
        assert len(client.get("/api/links").json()) == 2
