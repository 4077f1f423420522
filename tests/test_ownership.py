"""Labs belong to users: a user sees and touches only their own labs and what is in them;
anything else answers 404 as if absent; an admin sees all. Nodes stay stopped: ownership is
checked before anything runs."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import httpx
import pytest
from websockets.asyncio.client import connect

from support.server import Server


@dataclass
class World:
    server: Server
    image: str
    alice: str  # tokens
    bob: str
    bob_nodes: dict[str, dict]
    bob_link: dict

    def client(self, token: str) -> httpx.Client:
        return self.server.client(token=token)


@pytest.fixture(scope="module")
def world(server: Server) -> World:
    with server.client() as admin:
        image = admin.put("/api/images/own.img", content=b"\0" * (1 << 20)).json()["name"]
        tokens = {}
        for name in ("alice", "bob"):
            password = admin.post("/api/users", json={"name": name}).json()["password"]
            tokens[name] = server.login(name, password)
    with server.client(token=tokens["bob"]) as bob:
        assert bob.post("/api/labs", json={"name": "blab"}).status_code == 201
        nodes = {}
        for name in ("n1", "n2"):
            reply = bob.post("/api/nodes", json={"name": name, "image": image, "lab": "blab"})
            assert reply.status_code == 201, reply.text
            nodes[name] = reply.json()
        link = bob.post("/api/links", json={"lab": "blab", "a": "n1:eth0", "b": "n2:eth0"})
        assert link.status_code == 201, link.text
    with server.client(token=tokens["alice"]) as alice:
        assert alice.post("/api/labs", json={"name": "alab"}).status_code == 201
        reply = alice.post("/api/nodes", json={"name": "n1", "image": image, "lab": "alab"})
        assert reply.status_code == 201, reply.text
    return World(server, image, tokens["alice"], tokens["bob"], nodes, link.json())


def _absent(reply: httpx.Response, what: str) -> None:
    assert reply.status_code == 404, (reply.request.method, reply.request.url, reply.text)
    assert what in reply.json()["detail"] and "list` shows" in reply.json()["detail"]


def test_lists_show_only_ones_own(world: World) -> None:
    with world.client(world.alice) as alice:
        assert [lab["name"] for lab in alice.get("/api/labs").json()] == ["alab"]
        assert [(n["lab"], n["name"]) for n in alice.get("/api/nodes").json()] == [("alab", "n1")]
        assert alice.get("/api/links").json() == []
        assert [i["name"] for i in alice.get("/api/images").json()] == [world.image]  # shared
        assert alice.get("/api/nodes/n1").json()["lab"] == "alab"  # bob's n1 is not hers
    with world.server.client() as admin:
        assert {lab["name"] for lab in admin.get("/api/labs").json()} >= {"alab", "blab"}
        assert len([n for n in admin.get("/api/nodes").json() if n["name"] == "n1"]) == 2


def test_someone_elses_things_are_absent(world: World) -> None:
    node, link = world.bob_nodes["n1"], world.bob_link
    n, lk = f"/api/nodes/{node['id']}", f"/api/links/{link['id']}"
    calls = [
        ("GET", "/api/labs/blab", None, "no lab named 'blab'"),
        ("DELETE", "/api/labs/blab", None, "no lab named"),
        ("POST", "/api/labs/blab/start", None, "no lab named"),
        ("GET", "/api/labs/blab/export", None, "no lab named"),
        ("GET", "/api/labs/blab/archive", None, "no lab named"),
        ("GET", "/api/labs/blab/checkpoints", None, "no lab named"),
        ("GET", n, None, "no node"),
        ("GET", "/api/nodes/blab:n1", None, "no node"),
        ("GET", "/api/nodes/n2", None, "no node"),
        ("PATCH", n, {"ram_mb": 128}, "no node"),
        ("POST", f"{n}/start", None, "no node"),
        ("DELETE", n, None, "no node"),
        ("GET", f"{n}/screenshot", None, "no node"),
        ("GET", f"{n}/checkpoints", None, "no node"),
        ("GET", lk, None, "no link"),
        ("PATCH", lk, {"state": "down"}, "no link"),
        ("DELETE", lk, None, "no link"),
        ("POST", f"{lk}/capture/start", None, "no link"),
        ("GET", f"{lk}/capture", None, "no link"),
        ("GET", f"{lk}/capture/stream", None, "no link"),
        ("GET", "/api/links?lab=blab", None, "no lab named"),
        ("POST", "/api/links", {"lab": "blab", "a": "n1:eth0", "b": "n2:eth0"}, "no lab named"),
        ("POST", "/api/nodes", {"name": "x1", "image": world.image, "lab": "blab"}, "no lab"),
    ]
    with world.client(world.alice) as alice:
        for method, path, body, what in calls:
            _absent(alice.request(method, path, json=body), what)
        taken = alice.post("/api/labs", json={"name": "blab"})
        assert taken.status_code == 409 and "already exists" in taken.json()["detail"]
        topology = "name: blab\ntopology:\n  nodes:\n    x1: {}\n"
        deploy = alice.post("/api/labs", json={"topology": topology, "image": world.image})
        assert deploy.status_code == 409 and "is taken" in deploy.json()["detail"]
        default = alice.post("/api/nodes", json={"name": "x1", "image": world.image})
        assert default.status_code == 400, default.text
        assert "create a lab first" in default.json()["detail"]
    with world.client(world.bob) as bob:  # all still there, untouched
        assert bob.get(n).json()["ram_mb"] == node["ram_mb"]
        assert bob.get(lk).json()["state"] == "up"


def test_a_console_of_someone_elses_node_is_absent(world: World) -> None:
    node = world.bob_nodes["n1"]

    async def attempt(token: str) -> tuple[int | None, str]:
        url = world.server.ws_url(node["consoles"]["serial"]["ws"])
        async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            await ws.wait_closed()
            return ws.close_code, ws.close_reason or ""

    code, reason = asyncio.run(attempt(world.alice))
    assert code == 4404 and "no node" in reason
    code, reason = asyncio.run(attempt(world.bob))  # bob's own, stopped: a different refusal
    assert "no node" not in reason


def test_events_of_other_users_labs_are_not_sent(world: World) -> None:
    async def scenario() -> list[dict]:
        url = world.server.ws_url("/api/events")
        headers = {"Authorization": f"Bearer {world.alice}"}
        async with connect(url, additional_headers=headers) as ws, \
                world.server.async_client(token=world.bob) as bob, \
                world.server.async_client(token=world.alice) as alice:  # fmt: skip
            assert (await bob.patch("/api/nodes/blab:n2", json={"ram_mb": 200})).is_success
            assert (await alice.post("/api/labs", json={"name": "alab2"})).is_success
            seen: list[dict] = []
            while not any(e["kind"] == "lab" and e.get("name") == "alab2" for e in seen):
                seen.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
            return seen

    seen = asyncio.run(scenario())
    assert not [e for e in seen if "blab" in (e.get("lab"), e.get("name"))], seen


def test_a_removed_users_labs_go_to_the_admins(world: World) -> None:
    with world.server.client() as admin:
        assert admin.delete("/api/users/bob").status_code == 204
        assert admin.get("/api/labs/blab").json()["nodes"] == 2  # kept, now the admins'
    with world.client(world.bob) as bob:
        assert bob.get("/api/labs").status_code == 401  # his tokens ended with him
    with world.client(world.alice) as alice:
        _absent(alice.get("/api/labs/blab"), "no lab named")
