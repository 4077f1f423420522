"""``/api/events``: state changes arrive as they happen, over a WebSocket."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from support.bootdisk import boot_disk
from support.server import Server


async def _collect(ws, until, timeout: float = 120) -> list[dict]:  # type: ignore[no-untyped-def]
    seen: list[dict] = []

    async def loop() -> list[dict]:
        while not until(seen):
            seen.append(json.loads(await ws.recv()))
        return seen

    return await asyncio.wait_for(loop(), timeout)


def test_imports_and_node_changes_are_streamed(
    server: Server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    raw = boot_disk(tmp_path_factory).read_bytes()
    url = server.url.replace("http", "ws") + "/api/events"

    async def scenario() -> tuple[list[dict], list[dict]]:
        ws_ = connect(url, additional_headers=server.headers)
        async with ws_ as ws, server.async_client() as api:
            image = (await api.put("/api/images/ev.img", content=raw)).json()["name"]
            imports = await _collect(
                ws, lambda s: any(e["kind"] == "import" and e["state"] == "succeeded" for e in s)
            )
            node = (await api.post("/api/nodes", json={"name": "e1", "image": image})).json()
            await api.post(f"/api/nodes/{node['id']}/start")
            await api.post(f"/api/nodes/{node['id']}/kill")
            nodes = await _collect(
                ws, lambda s: [e["state"] for e in s if e["kind"] == "node"][-1:] == ["stopped"]
                and any(e.get("state") == "running" for e in s),
            )  # fmt: skip
            return imports, nodes

    imports, nodes = asyncio.run(scenario())
    stages = [e["stage"] for e in imports if e["kind"] == "import"]
    assert stages[-1] == "done"
    assert {"unpack", "inspect", "examine", "convert", "verify", "register"} <= set(stages)
    states = [e["state"] for e in nodes if e["kind"] == "node" and e["name"] == "e1"]
    assert states[0] == "stopped"  # created
    assert states.index("starting") < states.index("running") < len(states) - 1
    assert states[-1] == "stopped"
    assert all(e["lab"] == "default" for e in nodes if e["kind"] == "node")


def test_lab_and_link_changes_are_streamed(
    server: Server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A lab deployed, its link changed (down, impaired, captured) and the lab destroyed: each
    change reaches a watcher as it happens, named by lab."""
    raw = boot_disk(tmp_path_factory).read_bytes()
    topology = (Path(__file__).parents[1] / "examples" / "two-routers.yaml").read_text()
    url = server.url.replace("http", "ws") + "/api/events"

    async def scenario() -> list[dict]:
        ws_ = connect(url, additional_headers=server.headers)
        async with ws_ as ws, server.async_client() as api:
            image = (await api.put("/api/images/evlab.img", content=raw)).json()["name"]
            body = {"topology": topology, "image": image, "start": False}
            assert (await api.post("/api/labs", json=body)).status_code == 201
            link = (await api.get("/api/links", params={"lab": "two-routers"})).json()[0]
            for change in ({"state": "down"}, {"impairment": {"a_to_b": {"loss_pct": 50}}}):
                assert (await api.patch(f"/api/links/{link['id']}", json=change)).is_success
            for action in ("start", "stop"):
                assert (await api.post(f"/api/links/{link['id']}/capture/{action}")).is_success
            assert (await api.delete("/api/labs/two-routers")).status_code == 204
            return await _collect(
                ws, lambda s: any(e["kind"] == "lab" and e["state"] == "destroyed" for e in s)
            )

    seen = asyncio.run(scenario())
    labs = [e["state"] for e in seen if e["kind"] == "lab" and e["name"] == "two-routers"]
    assert labs[0] == "created" and labs[-1] == "destroyed" and "deployed" in labs
    links = [e for e in seen if e["kind"] == "link"]
    assert {e["lab"] for e in links} == {"two-routers"}
    assert [e["state"] for e in links][:2] == ["up", "down"]
    assert any(e["impairment"].get("a_to_b", {}).get("loss_pct") == 50 for e in links)
    capturing = [e["capturing"] for e in links]
    assert True in capturing and capturing.index(True) < len(capturing) - 1
    assert links[-1]["state"] == "deleted"
    nodes = {e["name"] for e in seen if e["kind"] == "node" and e["lab"] == "two-routers"}
    assert nodes == {"r1", "r2"}
