"""NAT nodes and management interfaces: QEMU user-mode networking, forwards on 127.0.0.1 only,
restrict=on (no guest traffic leaves this machine: no DNS, no routing through the host)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from support.console import SerialShell
from support.server import Server, free_port


@pytest.fixture(scope="module")
def nat_server(booted_server: tuple[Server, str]) -> tuple[Server, str]:
    return booted_server


async def _serve_once(shell: SerialShell, iface: str, text: str) -> None:
    for command in (f"ip addr add 10.0.2.15/24 dev {iface}", f"ip link set {iface} up"):
        assert (await shell.run(command))[0] == 0
    # One connection's worth of a server in the guest, in the background.
    await shell.run(f"(echo {text} | nc -l -p 7 &)")


async def _read_forward(port: int, timeout: float = 60) -> bytes:
    async def attempt() -> bytes:
        while True:  # until the guest's nc listens: slirp closes us at once before that
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            data = await reader.read(100)
            writer.close()
            if data:
                return data

    return await asyncio.wait_for(attempt(), timeout)


def test_nat_node_and_management_interface(nat_server: tuple[Server, str]) -> None:
    server, image = nat_server
    nat_port, mgmt_port = free_port(), free_port()
    topology = f"""
name: natlab
topology:
  defaults: {{image: {image}, ram_mb: 128}}
  nodes:
    h1: {{nics: 1}}
    h2:
      nics: 0
      management: {{forwards: [{{proto: tcp, host_port: {mgmt_port}, guest_port: 7}}]}}
    out:
      kind: nat
      management: {{forwards: [{{proto: tcp, host_port: {nat_port}, guest_port: 7}}]}}
  links:
    - endpoints: ["out:eth0", "h1:eth0"]
"""
    with server.client(timeout=600) as client:
        made = client.post("/api/labs", json={"topology": topology})
        assert made.status_code == 201, made.text
        lab = client.get("/api/labs/natlab").json()
        again = client.post("/api/labs", json={"topology": topology})
        assert again.status_code == 200 and again.json()["changed"] is False
        exported = client.get("/api/labs/natlab/export").text
    assert "kind: nat" in exported and str(nat_port) in exported and str(mgmt_port) in exported
    nodes = {n["name"]: n for n in lab["node_list"]}
    assert set(nodes) == {"h1", "h2"}, "a NAT node is no machine"

    for name, port in (("h1", nat_port), ("h2", mgmt_port)):
        pid = (server.data_dir / "nodes" / nodes[name]["id"] / "qemu.pid").read_text().strip()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        user = [a for a in cmdline if a.startswith("user,")]
        assert user == [f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:7"], user

    async def reach() -> None:
        h1 = await SerialShell.open(server, nodes["h1"])
        h2 = await SerialShell.open(server, nodes["h2"])
        await _serve_once(h1, "eth0", "through-nat")
        await _serve_once(h2, "eth0", "through-mgmt")
        assert (await _read_forward(nat_port)).strip() == b"through-nat"
        assert (await _read_forward(mgmt_port)).strip() == b"through-mgmt"
        # restrict=on: the guest reaches nothing through the host, not even its DNS.
        status, _ = await h1.run("nc -w 2 10.0.2.3 53 </dev/null", timeout=60)
        assert status != 0
        await h1.close()
        await h2.close()

    asyncio.run(reach())
    with server.client(timeout=600) as client:
        assert client.delete("/api/labs/natlab").status_code == 204
