"""The server's limits on real servers: imports in flight, nodes per user, RAM promised to nodes
against the host's memory. Each is reached, refused with its status and a message that says
where the requester stands and what to do, and leaves nothing half-done; under it, all works.

Uploads are held open by request bodies that wait on an event, so which imports are in flight
is known, not timed. The host's memory is made small by a setting, so tiny guests reach it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from support.bootdisk import boot_disk
from support.server import Server

RAW = b"\0" * (1 << 20)  # a 1 MiB raw disk: a valid image
SMALL = b"\0" * 4096  # the body of a request that is refused before it is read


def _users(server: Server, *names: str) -> dict[str, str]:
    """Users of role `user`, with their tokens."""
    tokens = {}
    with server.client() as admin:
        for name in names:
            reply = admin.post("/api/users", json={"name": name})
            assert reply.status_code == 201, reply.text
            tokens[name] = server.login(name, reply.json()["password"])
    return tokens


def _staged(server: Server) -> list[str]:
    staging = server.data_dir / "staging"
    return sorted(p.name for p in staging.iterdir()) if staging.exists() else []


def _node_dirs(server: Server) -> list[str]:
    return sorted(p.name for p in (server.data_dir / "nodes").iterdir())


async def _until(condition, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    """Wait for ``await condition()`` to be true (the server's own state, read through the API)."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "the condition never became true"
        await asyncio.sleep(0.02)  # a polling interval, not a wait in place of an event


def _too_many(reply: httpx.Response, *words: str) -> None:
    assert reply.status_code == 429, reply.text
    assert int(reply.headers["retry-after"]) > 0
    detail = reply.json()["detail"]
    for word in (*words, "nothing was received"):
        assert word in detail, detail


# -- imports in flight ----------------------------------------------------------------------------


def test_imports_in_flight_are_limited_for_the_server_and_per_user(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(
        {"VIRTLAB_MAX_CONCURRENT_IMPORTS": "2", "VIRTLAB_MAX_CONCURRENT_IMPORTS_PER_USER": "1"}
    )
    tokens = _users(server, "alice", "bob")

    async def scenario() -> None:
        release = asyncio.Event()

        async def held() -> AsyncIterator[bytes]:
            yield RAW[: 64 << 10]
            await release.wait()
            yield RAW[64 << 10 :]

        async with (
            server.async_client(token=tokens["alice"]) as alice,
            server.async_client(token=tokens["bob"]) as bob,
            server.async_client() as admin,
        ):

            async def running(n: int) -> bool:
                return (await admin.get("/api/limits")).json()["imports"]["running"] == n

            first = asyncio.create_task(alice.put("/api/images/held-a.img", content=held()))
            await _until(lambda: running(1))
            # Alice's share is used: her next import is refused, before anything is staged.
            staged = _staged(server)
            assert len(staged) == 1
            _too_many(
                await alice.put("/api/images/more.img", content=SMALL),
                "alice is running 1 imports", "VIRTLAB_MAX_CONCURRENT_IMPORTS_PER_USER=1",
                "Wait for one of yours",
            )  # fmt: skip
            assert _staged(server) == staged
            mine = (await alice.get("/api/limits")).json()["imports"]
            assert mine == {"max": 2, "max_per_user": 1, "running": 1, "yours": 1}
            # An admin has no share, but counts against the server's limit.
            second = asyncio.create_task(admin.put("/api/images/held-b.img", content=held()))
            await _until(lambda: running(2))
            staged = _staged(server)
            assert len(staged) == 2
            for client, path in (
                (bob, "/api/images/b.img"),
                (admin, "/api/images/c.img"),
                (bob, "/api/labs/import"),
            ):
                method = client.post if path.endswith("import") else client.put
                _too_many(
                    await method(path, content=SMALL),
                    "the server is running 2 imports", "VIRTLAB_MAX_CONCURRENT_IMPORTS=2",
                    "GET /api/imports", "raise VIRTLAB_MAX_CONCURRENT_IMPORTS",
                )  # fmt: skip
            assert _staged(server) == staged
            jobs = (await admin.get("/api/imports")).json()
            assert sorted(j["source_name"] for j in jobs) == ["held-a.img", "held-b.img"]
            assert (await bob.get("/api/labs/import-me")).status_code == 404  # no lab made
            # The held uploads finish; their slots are free again; under the limit all works.
            release.set()
            for task in (first, second):
                reply = await task
                assert reply.status_code == 201, reply.text
            await _until(lambda: running(0))
            reply = await bob.put("/api/images/b.img", content=RAW)
            assert reply.status_code == 201, reply.text

    asyncio.run(scenario())
    assert _staged(server) == []


# -- nodes per user -------------------------------------------------------------------------------


def _two_nodes(name: str, image: str) -> str:
    return f"""
name: {name}
topology:
  defaults: {{image: {image}, ram_mb: 64}}
  nodes:
    a: {{}}
    b: {{}}
"""


def test_nodes_per_user_are_limited_for_every_way_of_making_nodes(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server({"VIRTLAB_MAX_NODES_PER_USER": "2"})
    tokens = _users(server, "alice", "bob")
    with server.client() as admin:
        image = admin.put("/api/images/disk.img", content=RAW).json()["name"]
    alice = server.client(token=tokens["alice"])
    with alice, server.client() as admin:
        assert alice.post("/api/labs", json={"name": "al"}).status_code == 201
        made = alice.post("/api/nodes", json={"name": "n1", "image": image, "lab": "al"})
        assert made.status_code == 201, made.text
        before = _node_dirs(server)
        # A deploy that would pass the limit is refused as a whole, up front.
        reply = alice.post("/api/labs", json={"topology": _two_nodes("al2", image)})
        assert reply.status_code == 409, reply.text
        detail = reply.json()["detail"]
        for word in ("lab al2 (2 nodes)", "user alice has 1 nodes of the 2", "1 more fit",
                     "VIRTLAB_MAX_NODES_PER_USER", "virtlab lab destroy"):  # fmt: skip
            assert word in detail, detail
        assert alice.get("/api/labs/al2").status_code == 404
        assert _node_dirs(server) == before
        # One more node fits; the next does not.
        made = alice.post("/api/nodes", json={"name": "n2", "image": image, "lab": "al"})
        assert made.status_code == 201, made.text
        before = _node_dirs(server)
        reply = alice.post("/api/nodes", json={"name": "n3", "image": image, "lab": "al"})
        assert reply.status_code == 409, reply.text
        assert "node n3" in reply.json()["detail"]
        assert "user alice has 2 nodes of the 2" in reply.json()["detail"]
        # An admin's node in alice's lab is hers, and counts too.
        reply = admin.post("/api/nodes", json={"name": "n3", "image": image, "lab": "al"})
        assert reply.status_code == 409, reply.text
        # A lab archive of hers, imported again, would double her nodes.
        archive = alice.get("/api/labs/al/archive")
        assert archive.status_code == 200
        reply = alice.post("/api/labs/import", params={"name": "copy"}, content=archive.content)
        assert reply.status_code == 409, reply.text
        assert "lab copy (2 nodes)" in reply.json()["detail"]
        assert alice.get("/api/labs/copy").status_code == 404
        assert [n["name"] for n in alice.get("/api/nodes").json()] == ["n1", "n2"]
        assert _node_dirs(server) == before
        assert _staged(server) == []
        mine = alice.get("/api/limits").json()["nodes"]
        assert mine == {"max_per_user": 2, "yours": 2, "limited": True}
        # Admins are exempt: their labs hold what they need.
        for name in ("x1", "x2", "x3"):
            made = admin.post("/api/nodes", json={"name": name, "image": image})
            assert made.status_code == 201, made.text
        assert admin.get("/api/limits").json()["nodes"]["limited"] is False
        # Deleting a node makes room again.
        assert alice.delete("/api/nodes/n2").status_code == 204
        made = alice.post("/api/nodes", json={"name": "n3", "image": image, "lab": "al"})
        assert made.status_code == 201, made.text


def test_concurrent_creations_cannot_pass_the_node_limit(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server({"VIRTLAB_MAX_NODES_PER_USER": "2"})
    tokens = _users(server, "bob")
    with server.client() as admin:
        image = admin.put("/api/images/disk.img", content=RAW).json()["name"]
    with server.client(token=tokens["bob"]) as bob:
        assert bob.post("/api/labs", json={"name": "bl"}).status_code == 201

    async def scenario() -> list[int]:
        async with server.async_client(token=tokens["bob"]) as bob:
            replies = await asyncio.gather(*(
                bob.post("/api/nodes", json={"name": f"n{i}", "image": image, "lab": "bl"})
                for i in range(8)
            ))  # fmt: skip
        return sorted(r.status_code for r in replies)

    assert asyncio.run(scenario()) == [201, 201] + [409] * 6
    assert len(_node_dirs(server)) == 2

    async def same_name() -> list[int]:  # no limit for an admin: the name is what clashes
        async with server.async_client() as admin:
            replies = await asyncio.gather(*(
                admin.post("/api/nodes", json={"name": "dup", "image": image}) for _ in range(3)
            ))  # fmt: skip
        return sorted(r.status_code for r in replies)

    assert asyncio.run(same_name()) == [201, 409, 409]
    assert len(_node_dirs(server)) == 3


# -- RAM promised against the host's memory ------------------------------------------------------

# (1224 - 1024) x 1 = 200 MiB for nodes: three of 64 MiB fit.
SMALL_HOST = {"VIRTLAB_HOST_MEMORY_MB": "1224", "VIRTLAB_MEMORY_RESERVE_MB": "1024"}


def _lab(name: str, image: str, count: int) -> str:
    nodes = "\n".join(f"    {name}{i}: {{}}" for i in range(count))
    return (
        f"name: {name}\ntopology:\n  defaults: {{image: {image}, ram_mb: 64}}\n  nodes:\n{nodes}\n"
    )


def _memory(client: httpx.Client) -> dict:
    return client.get("/api/limits").json()["memory"]


def _no_qemu(server: Server, node_ids: list[str]) -> None:
    """No QEMU runs for these nodes: no pid file, or (a node that ran before) its pid is gone."""
    for node_id in node_ids:
        pidfile = server.data_dir / "nodes" / node_id / "qemu.pid"
        if pidfile.exists():
            with pytest.raises(ProcessLookupError):
                os.kill(int(pidfile.read_text()), 0)


def _wait_state(client: httpx.Client, node_id: str, state: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while client.get(f"/api/nodes/{node_id}").json()["state"] != state:
        assert time.monotonic() < deadline, f"node {node_id} never became {state}"


def _refused_for_ram(reply: httpx.Response, what: str) -> None:
    assert reply.status_code == 409, reply.text
    detail = reply.json()["detail"]
    for word in (f"cannot start {what}", "already promised", "of the 200 MiB (host memory 1224",
                 "less 1024 MiB kept", "MiB are free", "Stop nodes", "lower their ram_mb",
                 "VIRTLAB_MEMORY_OVERCOMMIT"):  # fmt: skip
        assert word in detail, detail


def test_ram_promised_to_nodes_stays_within_the_host(make_server, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    server = make_server(SMALL_HOST)
    with server.client(timeout=600) as client:
        image = client.put("/api/images/boot.img", content=boot_disk(tmp_path_factory).read_bytes())
        image = image.json()["name"]
        lab = client.post("/api/labs", json={"topology": _lab("m", image, 20), "start": False})
        assert lab.status_code == 201, lab.text
        nodes = {n["name"]: n["id"] for n in client.get("/api/labs/m").json()["node_list"]}
        assert _memory(client) | {"host_mb": 0} == {
            "host_mb": 0, "reserve_mb": 1024, "overcommit": 1.0, "capacity_mb": 200,
            "promised_mb": 0, "available_mb": 200, "active_nodes": 0,
        }  # fmt: skip

    # Twenty starts at once: three fit, the others are refused and start nothing.
    async def starts() -> list[httpx.Response]:
        async with server.async_client(timeout=600) as client:
            return await asyncio.gather(
                *(client.post(f"/api/nodes/{node_id}/start") for node_id in nodes.values())
            )

    replies = dict(zip(nodes, asyncio.run(starts()), strict=True))
    started = [name for name, r in replies.items() if r.status_code == 200]
    refused = [name for name, r in replies.items() if r.status_code != 200]
    assert len(started) == 3, {n: r.text for n, r in replies.items()}
    for name in refused:
        _refused_for_ram(replies[name], f"node {name} (64 MiB)")
    _no_qemu(server, [nodes[n] for n in refused])
    with server.client(timeout=600) as client:
        states = {n["name"]: n["state"] for n in client.get("/api/labs/m").json()["node_list"]}
        assert sorted(states[n] for n in started) == ["running"] * 3
        assert {states[n] for n in refused} == {"stopped"}
        memory = _memory(client)
        assert (memory["promised_mb"], memory["available_mb"], memory["active_nodes"]) == (
            192,
            8,
            3,
        )
        # A lab start is checked as a whole before any node starts.
        made = client.post("/api/labs", json={"topology": _lab("w", image, 2), "start": False})
        assert made.status_code == 201, made.text
        reply = client.post("/api/labs/w/start")
        _refused_for_ram(reply, "lab w (2 nodes, 128 MiB)")
        w_nodes = [n["id"] for n in client.get("/api/labs/w").json()["node_list"]]
        assert {n["state"] for n in client.get("/api/labs/w").json()["node_list"]} == {"stopped"}
        _no_qemu(server, w_nodes)
        # A deploy that would start what does not fit is refused before anything is made.
        before = _node_dirs(server)
        reply = client.post("/api/labs", json={"topology": _lab("d", image, 1)})
        _refused_for_ram(reply, "lab d (1 nodes), 64 MiB")
        assert client.get("/api/labs/d").status_code == 404
        assert _node_dirs(server) == before
        # A boot test runs a guest too.
        reply = client.post(f"/api/images/{image}/boot-test", json={"seconds": 5, "ram_mb": 16})
        _refused_for_ram(reply, f"a boot test of {image} (16 MiB)")
        # A QEMU that dies gives its RAM back; so does a stop.
        victim = nodes[started[0]]
        pid = int((server.data_dir / "nodes" / victim / "qemu.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        _wait_state(client, victim, "crashed")
        assert _memory(client)["promised_mb"] == 128
        assert client.post(f"/api/nodes/{nodes[refused[0]]}/start").status_code == 200
        assert client.post(f"/api/nodes/{nodes[started[1]]}/kill").status_code == 200
        _wait_state(client, nodes[started[1]], "stopped")
        assert _memory(client)["promised_mb"] == 128
        reply = client.post(f"/api/nodes/{nodes[refused[1]]}/start")
        assert reply.status_code == 200, reply.text
        limits = client.get("/api/limits").json()
        assert json.dumps(limits)  # the whole report is JSON
        assert limits["memory"]["promised_mb"] == 192


def test_a_checkpoint_resume_is_checked_against_the_host(make_server, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    server = make_server(SMALL_HOST)
    with server.client(timeout=600) as client:
        image = client.put("/api/images/boot.img", content=boot_disk(tmp_path_factory).read_bytes())
        image = image.json()["name"]
        made = client.post("/api/labs", json={"topology": _lab("c", image, 4), "start": False})
        assert made.status_code == 201, made.text
        ids = [n["id"] for n in client.get("/api/labs/c").json()["node_list"]]
        assert client.post(f"/api/nodes/{ids[0]}/start").status_code == 200
        taken = client.post(f"/api/nodes/{ids[0]}/checkpoints", json={"tag": "t1"})
        assert taken.status_code == 201, taken.text
        assert client.post(f"/api/nodes/{ids[0]}/kill").status_code == 200
        _wait_state(client, ids[0], "stopped")
        for node_id in ids[1:]:
            assert client.post(f"/api/nodes/{node_id}/start").status_code == 200
        reply = client.post(f"/api/nodes/{ids[0]}/checkpoints/t1/resume")
        _refused_for_ram(reply, "node c0 (64 MiB)")
        assert client.get(f"/api/nodes/{ids[0]}").json()["state"] == "stopped"
        _no_qemu(server, ids[:1])
        assert client.post(f"/api/nodes/{ids[1]}/kill").status_code == 200
        _wait_state(client, ids[1], "stopped")
        reply = client.post(f"/api/nodes/{ids[0]}/checkpoints/t1/resume")
        assert reply.status_code == 200, reply.text


@pytest.mark.parametrize("meminfo", ["MemTotal:       24683656 kB\nMemFree: 1 kB\n"])
def test_host_memory_is_read_from_meminfo(tmp_path: Path, meminfo: str) -> None:
    from virtlab.nodes.memory import MemoryBudget, host_memory_mb

    path = tmp_path / "meminfo"
    path.write_text(meminfo)
    assert host_memory_mb(path) == 24683656 // 1024
    assert MemoryBudget(4096, 1024, 1.5).capacity_mb == 4608
    assert MemoryBudget(512, 1024, 1.0).capacity_mb == 0


def test_doctor_shows_where_a_user_stands(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server({"VIRTLAB_MAX_NODES_PER_USER": "3", **SMALL_HOST})
    tokens = _users(server, "carol")
    env = {**os.environ, "VIRTLAB_URL": server.url, "VIRTLAB_TOKEN": tokens["carol"],
           "COLUMNS": "200", "VIRTLAB_DATA_DIR": str(server.data_dir)}  # fmt: skip
    virtlab = str(Path(sys.executable).with_name("virtlab"))
    done = subprocess.run(
        [virtlab, "doctor", "--usage", "--json"], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    usage = json.loads(done.stdout)["usage"]
    with server.client(token=tokens["carol"]) as carol:
        assert usage == carol.get("/api/limits").json()
    assert usage["nodes"] == {"max_per_user": 3, "yours": 0, "limited": True}
    assert usage["memory"]["capacity_mb"] == 200
    table = subprocess.run(
        [virtlab, "doctor", "--usage"], env=env, capture_output=True, text=True, timeout=300
    )
    assert table.returncode == 0, table.stderr
    assert "0 of 200 MiB (200 MiB free, 0 nodes)" in table.stdout
    assert "0 (limit: 3)" in table.stdout
    refused = subprocess.run(
        [virtlab, "doctor", "--usage"], env={**env, "VIRTLAB_TOKEN": "vl_bad"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "cannot read the server's limits" in refused.stderr
