"""A QEMU that dies (kill -9 of its pid) in a lab: the node is ``crashed`` with the last lines
of its log, ``/api/events`` says so, and ``start`` brings it back with its console and its
link (a ping across it works again)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

from websockets.asyncio.client import connect

from support.console import SerialShell
from support.server import Server
from virtlab.devtools.bootdisk import BOOT_MARKER

TWO = (Path(__file__).parents[1] / "examples" / "two-routers.yaml").read_text()


async def _shell(server: Server, node: dict, boot: int = 1) -> SerialShell:
    """The node's serial shell once the prompt of its ``boot``-th boot is up (the scrollback
    keeps earlier boots; what is typed before the prompt is flushed)."""
    shell = await SerialShell.open(server, node, booted=False)
    boots = rb".*?".join([b"SYSLINUX"] * boot)
    await shell.wait_for(rb"(?s)" + boots + rb".*?" + BOOT_MARKER.encode() + rb".*?# ", 180)
    return shell


async def _address(shell: SerialShell, ip: str) -> None:
    for command in (f"ip addr add {ip}/24 dev eth0", "ip link set eth0 up"):
        status, output = await shell.run(command)
        assert status == 0, (command, output)


async def _ping(shell: SerialShell, ip: str) -> tuple[int, str]:
    # The first frames may go before the peer's ARP answer: a few tries, each a real ping.
    return await shell.run(f"ping -c 3 -W 2 {ip} || ping -c 3 -W 2 {ip}", timeout=120)


def test_a_node_whose_qemu_dies_is_crashed_reported_and_starts_again(
    booted_server: tuple[Server, str],
) -> None:
    server, image = booted_server
    with server.client(timeout=600) as client:
        made = client.post("/api/labs", json={"topology": TWO, "image": image, "start": True})
        assert made.status_code == 201, made.text
        nodes = {n["name"]: n for n in client.get("/api/labs/two-routers").json()["node_list"]}
    r2_pid = int((server.data_dir / "nodes" / nodes["r2"]["id"] / "qemu.pid").read_text())

    async def scenario() -> list[dict]:
        r1, r2 = [await _shell(server, nodes[n]) for n in ("r1", "r2")]
        await _address(r1, "10.0.0.1")
        await _address(r2, "10.0.0.2")
        status, output = await _ping(r1, "10.0.0.2")
        assert status == 0, output
        await r2.close()

        events: list[dict] = []
        url = server.ws_url("/api/events")
        async with connect(url, additional_headers=server.headers) as ws:
            os.kill(r2_pid, signal.SIGKILL)

            async def until_crashed() -> None:
                while not any(e.get("state") == "crashed" for e in events):
                    events.append(json.loads(await ws.recv()))

            await asyncio.wait_for(until_crashed(), 120)

        async with server.async_client(timeout=600) as api:
            record = (await api.get("/api/nodes/two-routers:r2")).json()
            assert record["state"] == "crashed"
            assert "QEMU ended (signal 9)" in record["detail"]
            again = await api.post("/api/nodes/two-routers:r2/start")
            assert again.status_code == 200, again.text
            assert again.json()["state"] == "running" and again.json()["detail"] == ""

        r2 = await _shell(server, nodes["r2"], boot=2)  # the console works again
        await _address(r2, "10.0.0.2")
        status, output = await _ping(r1, "10.0.0.2")  # and the link carries frames again
        assert status == 0, output
        status, output = await _ping(r2, "10.0.0.1")
        assert status == 0, output
        for shell in (r1, r2):
            await shell.close()
        return events

    try:
        events = asyncio.run(scenario())
    finally:
        with server.client(timeout=600) as client:
            client.delete("/api/labs/two-routers")
    crashed = [e for e in events if e["kind"] == "node" and e["state"] == "crashed"]
    assert len(crashed) == 1
    assert crashed[0]["name"] == "r2" and crashed[0]["lab"] == "two-routers"
    assert "QEMU ended (signal 9)" in crashed[0]["detail"]
    assert "\n" in crashed[0]["detail"], "the detail carries the tail of QEMU's log"
