"""``/api/events``: state changes arrive as they happen, over a WebSocket."""

from __future__ import annotations

import asyncio
import json

import httpx
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
        async with connect(url) as ws, httpx.AsyncClient(base_url=server.url, timeout=120) as api:
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
