"""Nodes end to end: a real server, real QEMU guests (TCG) booting the tiny test disk.

Consoles are reached the way users reach them: the serial WebSocket (xterm.js), the telnet port
(PuTTY, telnet), the VNC WebSocket (noVNC) and the VNC TCP port.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from support.qimg import info
from support.rfb import Rfb, assert_not_blank
from support.server import Server
from virtlab.devtools.bootdisk import BOOT_MARKER

MARKER = BOOT_MARKER.encode()


@pytest.fixture(scope="module")
def lab(booted_server: tuple[Server, str]) -> tuple[Server, str]:
    return booted_server


def _create(client: httpx.Client, image: str, name: str, **extra: object) -> dict:
    response = client.post(
        "/api/nodes", json={"name": name, "image": image, "ram_mb": 128, **extra}
    )
    assert response.status_code == 201, response.text
    return response.json()


def _act(client: httpx.Client, node: str, action: str, expected: int = 200) -> dict:
    response = client.post(f"/api/nodes/{node}/{action}")
    assert response.status_code == expected, response.text
    return response.json()


def _wait_state(client: httpx.Client, node: str, state: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = client.get(f"/api/nodes/{node}").json()
        if record["state"] == state:
            return record
    raise AssertionError(f"node {node} never became {state}: {record}")


async def _ws_until(ws, pattern: bytes, timeout: float = 90) -> bytes:  # type: ignore[no-untyped-def]
    seen = b""

    async def loop() -> bytes:
        nonlocal seen
        while not re.search(pattern, seen):
            seen += await ws.recv()
        return seen

    return await asyncio.wait_for(loop(), timeout)


async def _telnet_until(reader: asyncio.StreamReader, pattern: bytes, timeout: float = 90) -> bytes:
    seen = b""

    async def loop() -> bytes:
        nonlocal seen
        while not re.search(pattern, seen):
            chunk = await reader.read(4096)
            assert chunk, f"telnet closed; saw {seen[-300:]!r}"
            seen += chunk
        return seen

    return await asyncio.wait_for(loop(), timeout)


async def _marker(server: Server, node: dict) -> None:
    """Until the node's guest has booted: its marker on the serial console."""
    url = server.ws_url(node["consoles"]["serial"]["ws"])
    async with connect(url, additional_headers=server.headers) as ws:
        await _ws_until(ws, MARKER)


def _booted(server: Server, node: dict) -> dict:
    """``node``, running a booted guest: started, and its boot awaited, unless it runs."""
    with server.client() as client:
        if client.get(f"/api/nodes/{node['name']}").json()["state"] == "running":
            return node
        _act(client, node["name"], "start")
    asyncio.run(_marker(server, node))
    return node


@pytest.fixture(scope="module")
def guest(lab: tuple[Server, str]) -> dict:
    """Node v1, the module's booted guest: one boot serves the tests that only look at it or
    talk to it (VNC, the CLI console) and the restart's test of a node that outlives the server
    (which kills it, last). Only ever started by :func:`_booted`, which waits for the boot."""
    server, image = lab
    with server.client() as client:
        return _create(client, image, "v1")


@pytest.fixture
def booted(lab: tuple[Server, str], guest: dict) -> dict:
    return _booted(lab[0], guest)


def test_a_node_boots_and_answers_on_every_console(lab: tuple[Server, str]) -> None:
    server, image = lab
    with server.client() as client:
        node = _create(client, image, "r1")
        assert node["state"] == "stopped"
        disk = server.data_dir / "nodes" / node["id"] / "disk.qcow2"
        assert Path(info(disk)["backing-filename"]).name == image, "an overlay over the image"
        assert [i["name"] for i in node["interfaces"]] == ["eth0"]
        started = _act(client, "r1", "start")
        assert started["state"] == "running"
        pid = int((server.data_dir / "nodes" / node["id"] / "qemu.pid").read_text())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"-S" not in argv, "nodes start running, not halted"

    ws_url = server.url.replace("http", "ws") + node["consoles"]["serial"]["ws"]
    telnet_port = node["consoles"]["serial"]["telnet_port"]

    async def consoles() -> None:
        async with connect(ws_url, additional_headers=server.headers) as ws:
            boot_log = await _ws_until(ws, MARKER)
            # The guest ran from QEMU's first instant (no -S), before any console client:
            # the very first bytes it printed (the boot loader's banner) are in the scrollback,
            # kept by the connection the server queued on the serial socket before the spawn.
            assert boot_log.startswith(b"\r\nSYSLINUX "), boot_log[:300]
            reader, writer = await asyncio.open_connection("127.0.0.1", telnet_port)
            await _telnet_until(reader, MARKER)  # a late client sees the boot log
            writer.write(b"echo $((6*7))\r\n")
            await writer.drain()
            await _telnet_until(reader, rb"\b42\b")
            await _ws_until(ws, rb"\b42\b")  # the other client sees the same answer
            await ws.send("echo $((7*8))\r")
            await _ws_until(ws, rb"\b56\b")
            await _telnet_until(reader, rb"\b56\b")
            writer.close()

    asyncio.run(consoles())

    with server.client() as client:
        png = client.get("/api/nodes/r1/screenshot")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert _png_is_not_blank(png.content)
        stopped = client.post("/api/nodes/r1/stop", params={"timeout": 60}).json()
        assert stopped["state"] == "stopped", stopped


def _png_is_not_blank(data: bytes) -> bool:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    at, idat = 8, b""
    while at < len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        kind = data[at + 4 : at + 8]
        if kind == b"IDAT":
            idat += data[at + 8 : at + 8 + length]
        at += 12 + length
    pixels = zlib.decompress(idat)
    return len(set(pixels)) > 3


def test_vnc_speaks_rfb_through_the_websocket_and_the_tcp_port(
    lab: tuple[Server, str], booted: dict
) -> None:
    server, node = lab[0], booted  # booted: text on the screen before VNC is asked for it

    async def both() -> None:
        ws_url = server.url.replace("http", "ws") + node["consoles"]["vnc"]["ws"]
        binary = ["binary"]
        async with connect(ws_url, subprotocols=binary, additional_headers=server.headers) as ws:
            rfb = Rfb.over_websocket(ws)
            width, height, bpp, name = await rfb.handshake()
            assert width > 0 and height > 0 and name.startswith(b"QEMU")
            assert_not_blank(await rfb.framebuffer(width, height), bpp)
        reader, writer = await asyncio.open_connection("127.0.0.1", node["consoles"]["vnc"]["port"])
        rfb = Rfb.over_stream(reader, writer)
        width, height, bpp, _ = await rfb.handshake()
        assert_not_blank(await rfb.framebuffer(width, height), bpp)
        writer.close()

    asyncio.run(both())


def test_the_cli_console_bridges_a_terminal(lab: tuple[Server, str], booted: dict) -> None:
    server = lab[0]
    virtlab = str(Path(sys.executable).with_name("virtlab"))
    proc = subprocess.Popen(
        [virtlab, "node", "console", booted["name"]],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **server.cli_env},
    )
    seen = bytearray()
    grew = threading.Condition()

    def pump() -> None:
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(4096):  # type: ignore[attr-defined]
            with grew:
                seen.extend(chunk)
                grew.notify_all()

    def wait_for(pattern: bytes) -> None:
        with grew:
            assert grew.wait_for(lambda: re.search(pattern, seen), 90), bytes(seen[-300:])

    threading.Thread(target=pump, daemon=True).start()
    try:
        wait_for(MARKER)
        assert proc.stdin is not None
        proc.stdin.write(b"echo $((6*7))\r")
        proc.stdin.flush()
        wait_for(rb"\b42\b")
        proc.stdin.write(b"\x1d")  # Ctrl-]
        proc.stdin.flush()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe:
                pipe.close()


def test_a_qemu_that_dies_makes_the_node_crashed_with_its_log(lab: tuple[Server, str]) -> None:
    server, image = lab
    with server.client() as client:
        node = _create(client, image, "c1")
        _act(client, "c1", "start")
        pid = int((server.data_dir / "nodes" / node["id"] / "qemu.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        crashed = _wait_state(client, "c1", "crashed")
        assert "QEMU ended (signal 9)" in crashed["detail"]
        again = _act(client, "c1", "start")  # a crashed node can start again
        assert again["state"] == "running" and again["detail"] == ""
        _act(client, "c1", "kill")


def test_refusals_say_why(lab: tuple[Server, str]) -> None:
    server, image = lab
    with server.client() as client:
        _create(client, image, "g1")
        refused = client.post("/api/nodes/g1/stop")
        assert refused.status_code == 409
        assert refused.json()["detail"] == "cannot stop node g1: it is stopped; start it first"
        # A clash found while the disk is being made (they overlap) removes that disk again.
        before = sorted(p.name for p in (server.data_dir / "nodes").iterdir())
        clash = client.post("/api/nodes", json={"name": "g1", "image": image})
        assert clash.status_code == 409 and "g1" in clash.json()["detail"], clash.text
        assert sorted(p.name for p in (server.data_dir / "nodes").iterdir()) == before
        bad = client.post("/api/nodes", json={"name": "../etc", "image": image})
        assert bad.status_code == 422
        missing = client.post("/api/nodes", json={"name": "g2", "image": "nope.qcow2"})
        assert missing.status_code == 404 and "nope.qcow2" in missing.json()["detail"]
        extra = client.post(
            "/api/nodes", json={"name": "g3", "image": image, "extra_args": ["-drive", "x"]}
        )
        assert extra.status_code == 400 and "-drive" in extra.json()["detail"]
        in_use = client.delete(f"/api/images/{image}")
        assert in_use.status_code == 409
        assert "g1" in in_use.json()["detail"]
        _act(client, "g1", "start")
        assert client.post("/api/nodes/g1/start").status_code == 409
        assert client.delete("/api/nodes/g1").status_code == 409
        patch = client.patch("/api/nodes/g1", json={"cpus": 2})
        assert patch.status_code == 409 and "stop it first" in patch.json()["detail"]
        _act(client, "g1", "kill")
        assert client.patch("/api/nodes/g1", json={"cpus": 2}).json()["cpus"] == 2


def test_suspend_resume_reset_wipe_and_delete(lab: tuple[Server, str]) -> None:
    server, image = lab
    with server.client() as client:
        node = _create(client, image, "w1")
        disk = server.data_dir / "nodes" / node["id"] / "disk.qcow2"
        _act(client, "w1", "start")
        assert _act(client, "w1", "suspend")["state"] == "suspended"
        assert _act(client, "w1", "resume")["state"] == "running"
        assert _act(client, "w1", "reset")["state"] == "running"
        _act(client, "w1", "kill")
        before = disk.stat().st_ino
        assert _act(client, "w1", "wipe")["state"] == "stopped"
        assert disk.stat().st_ino != before
        assert client.delete("/api/nodes/w1").status_code == 204
        assert not disk.parent.exists()
        assert client.get("/api/nodes/w1").status_code == 404


@dataclass
class Restart:
    """What one restart of the server found: the booted guest had outlived it, and node d1's
    QEMU had been killed while it was down."""

    outlived: dict
    died: dict
    alive_while_down: bool  # the guest's QEMU, once the server had stopped


@pytest.fixture(scope="module")
def restart(lab: tuple[Server, str], guest: dict) -> Restart:
    """One server restart serves the two tests of what a restart finds (each restart is a
    server start-up). The guest has booted, so that its scrollback has something to keep."""
    server, image = lab
    node = _booted(server, guest)
    with server.client() as client:
        died = _create(client, image, "d1")
        _act(client, "d1", "start")
    pids = {
        name: int((server.data_dir / "nodes" / record["id"] / "qemu.pid").read_text())
        for name, record in (("outlived", node), ("died", died))
    }
    server.stop()
    try:
        os.kill(pids["outlived"], 0)  # still alive without the server
        alive = True
    except ProcessLookupError:
        alive = False
    os.kill(pids["died"], signal.SIGKILL)
    server.start()
    return Restart(node, died, alive)


def test_nodes_outlive_the_server_and_are_re_adopted(
    lab: tuple[Server, str], restart: Restart
) -> None:
    server, name = lab[0], restart.outlived["name"]
    assert restart.alive_while_down, "the guest's QEMU ended with the server"
    with server.client() as client:
        assert client.get(f"/api/nodes/{name}").json()["state"] == "running"
    ws_url = server.ws_url(restart.outlived["consoles"]["serial"]["ws"])

    async def talk() -> None:
        async with connect(ws_url, additional_headers=server.headers) as ws:
            await _ws_until(ws, MARKER)  # the scrollback survived the restart
            await ws.send("echo $((9*9))\r")
            await _ws_until(ws, rb"\b81\b")

    asyncio.run(talk())
    with server.client() as client:
        _act(client, name, "kill")  # a QEMU the server did not start, and cannot reap


def test_a_node_that_died_while_the_server_was_down_is_crashed(
    lab: tuple[Server, str], restart: Restart
) -> None:
    with lab[0].client() as client:
        record = client.get(f"/api/nodes/{restart.died['name']}").json()
    assert record["state"] == "crashed"
    assert "no longer running when the server restarted" in record["detail"]


def test_the_cli_drives_nodes(lab: tuple[Server, str]) -> None:
    server, image = lab
    env = {**os.environ, **server.cli_env}
    virtlab = str(Path(sys.executable).with_name("virtlab"))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [virtlab, *args], capture_output=True, text=True, env=env, timeout=120
        )

    created = cli("node", "create", "k1", "--image", image, "--ram-mb", "128", "--start", "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["state"] == "running"
    listed = json.loads(cli("node", "list", "--json").stdout)
    assert "k1" in [n["name"] for n in listed]
    shot = cli("node", "screenshot", "k1", "-o", str(server.data_dir / "k1.png"))
    assert shot.returncode == 0, shot.stderr
    assert (server.data_dir / "k1.png").read_bytes().startswith(b"\x89PNG")
    assert cli("node", "kill", "k1").returncode == 0
    refused = cli("node", "stop", "k1")
    assert refused.returncode == 1 and "it is stopped; start it first" in refused.stderr
    assert cli("node", "rm", "k1").returncode == 0
