"""Consoles in front of a real QEMU (TCG) booting the tiny test disk.

QEMU listens on its serial socket (``server=on,wait=off``) and on a VNC unix socket, as nodes
do; the hub connects to the serial socket as soon as it appears. The serial console is reached
through the hub, a telnet port and a WebSocket (``serve_serial`` on a Starlette app served by
uvicorn in this test's event loop, see ``support.fake_peers.serve_app``);
VNC through ``serve_vnc`` and through ``VncTcpProxy``, spoken to as a real RFB client.

One guest serves the module; the last test powers it off.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect

from support.bootdisk import boot_disk
from support.fake_peers import read_until, serve_app, short_dir
from support.guest import QEMU
from support.rfb import Rfb, assert_not_blank
from virtlab.consoles import SerialHub, TelnetServer, VncTcpProxy, serve_serial, serve_vnc
from virtlab.consoles.hub import NOTICE_EXITED
from virtlab.devtools.bootdisk import BOOT_MARKER

pytestmark = pytest.mark.asyncio(loop_scope="module")
MARKER = BOOT_MARKER.encode()
TELNET_GREETING_LEN = 15


def qemu_argv(disk: Path, serial: Path, vnc: Path) -> list[str]:
    return [
        QEMU, "-accel", "tcg", "-m", "256", "-nodefaults", "-no-reboot", "-vga", "std",
        "-chardev", f"socket,id=serial0,path={serial},server=on,wait=off",
        "-serial", "chardev:serial0",
        "-vnc", f"unix:{vnc},share=force-shared",
        "-drive", f"file={disk},format=raw,if=ide,snapshot=on",
    ]  # fmt: skip


@dataclass
class Node:
    proc: subprocess.Popen[bytes]
    serial: Path
    vnc: Path
    hub: SerialHub
    telnet: TelnetServer
    vnc_proxy: VncTcpProxy
    http_port: int
    timings: dict[str, float]

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.http_port}{path}"


def make_app(hub: SerialHub, vnc: Path) -> Starlette:
    async def serial_route(ws: WebSocket) -> None:
        await serve_serial(ws, hub)

    async def vnc_route(ws: WebSocket) -> None:
        await serve_vnc(ws, vnc)

    return Starlette(
        routes=[WebSocketRoute("/serial", serial_route), WebSocketRoute("/vnc", vnc_route)]
    )


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def node(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Node]:
    disk = boot_disk(tmp_path_factory)
    with short_dir("vlqemu-") as workdir:
        serial, vnc = workdir / "serial.sock", workdir / "vnc.sock"
        timings: dict[str, float] = {}
        started = time.monotonic()
        with (workdir / "qemu.log").open("wb") as log:
            proc = subprocess.Popen(
                qemu_argv(disk, serial, vnc), stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        hub = SerialHub(serial)
        telnet, vnc_proxy = TelnetServer(hub), VncTcpProxy(vnc)
        try:
            await hub.start(timeout=30)  # QEMU may not have made the socket yet: the hub waits
            timings["connected"] = time.monotonic() - started
            await telnet.start()
            await vnc_proxy.start()
            async with serve_app(make_app(hub, vnc)) as http_port:
                with hub.subscribe() as sub:
                    seen = b""
                    async with asyncio.timeout(60):
                        async for chunk in sub:
                            seen += chunk
                            if MARKER in seen:
                                break
                    assert MARKER in seen, seen[-500:]
                timings["marker"] = time.monotonic() - started
                yield Node(proc, serial, vnc, hub, telnet, vnc_proxy, http_port, timings)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            await vnc_proxy.stop()
            await telnet.stop()
            await hub.stop()


async def telnet_client(node: Node) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", node.telnet.port)
    await reader.readexactly(TELNET_GREETING_LEN)
    return reader, writer


async def ws_read_until(ws: ClientConnection, pattern: bytes | re.Pattern[bytes]) -> bytes:
    data = b""
    async with asyncio.timeout(30):
        while not (pattern.search(data) if isinstance(pattern, re.Pattern) else pattern in data):
            frame = await ws.recv()
            assert isinstance(frame, bytes), "serial output comes as binary frames"
            data += frame
    return data


async def test_marker_through_hub_and_telnet(node: Node) -> None:
    assert MARKER in node.hub.scrollback
    reader, writer = await telnet_client(node)
    await read_until(reader, MARKER)  # the scrollback: the marker is printed only once
    writer.close()
    await writer.wait_closed()


async def test_command_on_telnet_is_seen_on_websocket_and_back(node: Node) -> None:
    reader, writer = await telnet_client(node)
    async with connect(node.ws_url("/serial"), max_size=None) as ws:
        await ws_read_until(ws, MARKER)  # the scrollback
        writer.write(b"echo $((6*7))\r\n")  # Enter as PuTTY sends it
        answer = re.compile(rb"\n42\r?\n")
        await read_until(reader, answer, timeout=30)
        await ws_read_until(ws, answer)
        await ws.send("echo $((7*8))\r")  # typed in xterm.js: a text frame
        answer = re.compile(rb"\n56\r?\n")
        await ws_read_until(ws, answer)
        await read_until(reader, answer, timeout=30)
        await ws.send(b"echo $((8*9))\r")  # a binary frame
        answer = re.compile(rb"\n72\r?\n")
        await ws_read_until(ws, answer)
        await read_until(reader, answer, timeout=30)
    writer.close()
    await writer.wait_closed()


async def test_late_telnet_client_sees_the_boot_log(node: Node) -> None:
    reader, writer = await telnet_client(node)
    scrollback = await read_until(reader, MARKER)
    assert b"virtlab guest" in scrollback
    writer.close()
    await writer.wait_closed()


async def test_vnc_through_websocket_and_tcp_proxy_at_once(node: Node) -> None:
    async with connect(node.ws_url("/vnc"), subprotocols=["binary"], max_size=None) as ws:
        assert ws.subprotocol == "binary"

        async def ws_recv() -> bytes:
            frame = await ws.recv()
            assert isinstance(frame, bytes)
            return frame

        browser = Rfb(ws_recv, ws.send)
        width, height, bpp, name = await browser.handshake()
        assert name.startswith(b"QEMU")
        assert width >= 640 and height >= 400 and bpp in (8, 16, 32), (width, height, bpp)
        assert_not_blank(await browser.full_screen(width, height, bpp), bpp)

        # A desktop client through the TCP port, while the browser stays connected (shared).
        reader, writer = await asyncio.open_connection("127.0.0.1", node.vnc_proxy.port)

        async def tcp_recv() -> bytes:
            data = await reader.read(65536)
            assert data, "the VNC proxy closed the connection"
            return data

        async def tcp_send(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        desktop = Rfb(tcp_recv, tcp_send)
        assert (await desktop.handshake())[:2] == (width, height)
        assert_not_blank(await desktop.full_screen(width, height, bpp), bpp)
        assert node.vnc_proxy.connection_count == 1
        writer.close()
        await writer.wait_closed()
        # The browser's session is still alive after the other client left.
        assert_not_blank(await browser.full_screen(width, height, bpp), bpp)


async def test_guest_poweroff_ends_every_client(node: Node) -> None:
    """Last: the guest powers off, QEMU exits; telnet and WebSocket clients are told and closed."""
    reader, writer = await telnet_client(node)
    async with connect(node.ws_url("/serial"), max_size=None) as ws:
        await ws_read_until(ws, MARKER)
        writer.write(b"poweroff -f\r")
        assert (await ws_read_until(ws, NOTICE_EXITED)).endswith(NOTICE_EXITED)
        await ws.wait_closed()
        assert ws.close_code == 1000
    assert (await asyncio.wait_for(reader.read(), 10)).endswith(NOTICE_EXITED)
    writer.close()
    await writer.wait_closed()
    assert node.proc.wait(10) == 0
    assert node.hub.close_reason == "exited"
    print(f"qemu start -> hub connected {node.timings['connected'] * 1000:.0f} ms, "
          f"-> marker {node.timings['marker']:.2f} s")  # fmt: skip
