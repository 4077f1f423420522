"""Labs from topology files on real guests: deploy, route across a chain, redeploy, export,
destroy, and a failed deploy that leaves nothing behind."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.console import SerialShell
from support.server import Server

EXAMPLES = Path(__file__).parents[1] / "examples"
VIRTLAB = str(Path(sys.executable).with_name("virtlab"))


@pytest.fixture(scope="module")
def lab_server(booted_server: tuple[Server, str]) -> tuple[Server, str]:
    return booted_server


def cli(server: Server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [VIRTLAB, *args], capture_output=True, text=True, timeout=600,
        env={**os.environ, **server.cli_env, "COLUMNS": "200"},
    )  # fmt: skip


def test_a_chain_routes_and_redeploys_unchanged(lab_server: tuple[Server, str]) -> None:
    server, image = lab_server
    chain = str(EXAMPLES / "chain3.yaml")
    done = cli(server, "lab", "deploy", chain, "--image", image)
    assert done.returncode == 0, done.stderr
    assert "deployed lab chain3 (3 nodes, 2 links)" in done.stdout
    with server.client() as client:
        lab = client.get("/api/labs/chain3").json()
    nodes = {n["name"]: n for n in lab["node_list"]}
    assert {n["state"] for n in nodes.values()} == {"running"}

    async def route() -> None:
        h1, r, h2 = [await SerialShell.open(server, nodes[n]) for n in ("h1", "r", "h2")]
        for shell, commands in (
            (h1, ["ip addr add 10.1.0.1/24 dev eth0", "ip link set eth0 up",
                  "ip route add default via 10.1.0.254"]),
            (r, ["ip addr add 10.1.0.254/24 dev eth0", "ip addr add 10.2.0.254/24 dev eth1",
                 "ip link set eth0 up", "ip link set eth1 up",
                 "echo 1 > /proc/sys/net/ipv4/ip_forward"]),
            (h2, ["ip addr add 10.2.0.1/24 dev eth0", "ip link set eth0 up",
                  "ip route add default via 10.2.0.254"]),
        ):  # fmt: skip
            for command in commands:
                status, output = await shell.run(command)
                assert status == 0, (command, output)
        status, output = await h1.run("ping -c 3 -W 2 10.2.0.1", timeout=120)
        assert status == 0 and "ttl=63" in output, output  # one router on the way
        for shell in (h1, r, h2):
            await shell.close()

    asyncio.run(route())

    again = cli(server, "lab", "deploy", chain, "--image", image, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["changed"] is False

    svg = cli(server, "lab", "graph", "chain3")
    assert svg.returncode == 0 and "<svg" in svg.stdout
    assert all(name in svg.stdout for name in ("h1", "h2", ">r<"))


def test_export_destroy_redeploy_gives_the_same_lab(lab_server: tuple[Server, str]) -> None:
    server, image = lab_server
    text = (EXAMPLES / "two-routers.yaml").read_text()
    with server.client(timeout=600) as client:
        made = client.post("/api/labs", json={"topology": text, "image": image, "start": False})
        assert made.status_code == 201, made.text
        # Edited by hand through the API, then exported: the edit is in the file.
        edited = client.patch("/api/nodes/two-routers:r2", json={"ram_mb": 192})
        assert edited.status_code == 200, edited.text
        link = client.get("/api/links", params={"lab": "two-routers"}).json()[0]
        delay = {"impairment": {"a_to_b": {"delay_ms": 20}}}
        assert client.patch(f"/api/links/{link['id']}", json=delay).status_code == 200
        exported = client.get("/api/labs/two-routers/export").text
        assert "192" in exported and "delay_ms: 20" in exported
        assert client.delete("/api/labs/two-routers").status_code == 204
        assert client.get("/api/labs/two-routers").status_code == 404
        redeployed = client.post(
            "/api/labs", content=exported, headers={"content-type": "application/yaml"},
            params={"start": "false"},
        )  # fmt: skip
        assert redeployed.status_code == 201, redeployed.text
        assert client.get("/api/labs/two-routers/export").text == exported
        client.delete("/api/labs/two-routers")


def test_a_failed_deploy_leaves_nothing_behind(lab_server: tuple[Server, str]) -> None:
    server, image = lab_server
    broken = f"""
name: half
topology:
  defaults: {{image: {image}, ram_mb: 128}}
  nodes:
    a: {{}}
    b: {{}}
    c: {{image: missing.qcow2}}
  links:
    - endpoints: ["a:eth0", "b:eth0"]
"""
    nodes_dir = server.data_dir / "nodes"
    before = sorted(p.name for p in nodes_dir.iterdir())
    with server.client(timeout=600) as client:
        response = client.post("/api/labs", json={"topology": broken})
        assert response.status_code == 404
        assert "missing.qcow2" in response.json()["detail"]
        assert client.get("/api/labs/half").status_code == 404
        assert "half" not in json.dumps(client.get("/api/nodes").json())
        assert client.get("/api/links", params={"lab": "default"}).json() == []
    assert sorted(p.name for p in nodes_dir.iterdir()) == before


def test_a_bad_file_lists_every_problem(lab_server: tuple[Server, str]) -> None:
    server, _ = lab_server
    bad = """
name: bad
topology:
  nodes:
    r1: {nics: 2, image: x}
    r2: {nics: 99, image: x}
  links:
    - endpoints: ["r1:eth5", "r2:eth0"]
    - endpoints: ["r1:eth0", "nope:eth0"]
"""
    with server.client() as client:
        response = client.post("/api/labs", content=bad, headers={"content-type": "text/yaml"})
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "r2.nics" in detail and "r1:eth5 does not exist" in detail and "nope" in detail


def test_the_schema_is_published(lab_server: tuple[Server, str]) -> None:
    server, _ = lab_server
    with server.client() as client:
        schema = client.get("/api/labs/schema").json()
    assert schema["title"] and "topology" in json.dumps(schema)
