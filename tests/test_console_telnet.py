"""The bridges over real sockets, in front of fake QEMU sockets.

TelnetServer (asyncio TCP clients speaking telnet, and the system's ``telnet`` when installed);
then the WebSocket bridges ``serve_serial`` and ``serve_vnc`` (served by uvicorn in the test's
event loop, reached with the ``websockets`` client) and the VNC TCP proxy.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from support.fake_peers import FakeSerialPeer, read_until, serve_app, short_dir
from virtlab.consoles import SerialHub, TelnetServer, VncTcpProxy, serve_serial, serve_vnc
from virtlab.consoles.hub import NOTICE_EXITED, NOTICE_SLOW, NOTICE_STOPPED

IAC, DONT, DO, WONT, WILL, SB, SE, IP = 255, 254, 253, 252, 251, 250, 240, 244
BINARY, ECHO, SGA, TTYPE, TIMING_MARK, NAWS = 0, 1, 3, 24, 6, 31
GREETING = bytes(
    [IAC, WILL, ECHO, IAC, WILL, SGA, IAC, DO, SGA, IAC, WILL, BINARY, IAC, DO, BINARY]
)
BOOT_LOG = b"Linux booting\r\nvirtlab-guest:~# "


@dataclass
class Setup:
    qemu: FakeSerialPeer
    hub: SerialHub
    telnet: TelnetServer


@pytest_asyncio.fixture
async def setup() -> AsyncIterator[Setup]:
    with short_dir() as workdir:
        qemu = await FakeSerialPeer(workdir / "serial.sock", boot_log=BOOT_LOG).start()
        hub = SerialHub(qemu.path)
        await hub.start()
        telnet = TelnetServer(hub, port=0)
        await telnet.start()
        try:
            yield Setup(qemu, hub, telnet)
        finally:
            await telnet.stop()
            await hub.stop()
            await qemu.close()


async def telnet_client(telnet: TelnetServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A telnet client past the greeting and the scrollback."""
    reader, writer = await asyncio.open_connection("127.0.0.1", telnet.port)
    assert await reader.readexactly(len(GREETING)) == GREETING
    assert await read_until(reader, b"~# ") == BOOT_LOG
    return reader, writer


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


@pytest.mark.asyncio
async def test_greeting_then_scrollback_then_live(setup: Setup) -> None:
    assert setup.telnet.port > 0
    reader, writer = await telnet_client(setup.telnet)
    await setup.qemu.send(b"live\r\n")
    assert await read_until(reader, b"live\r\n") == b"live\r\n"
    await close(writer)


@pytest.mark.asyncio
async def test_enter_becomes_cr_even_when_split(setup: Setup) -> None:
    reader, writer = await telnet_client(setup.telnet)
    for piece in (b"ab", b"c\r", b"\n", b"def\r\x00", b"g\nh\r\r\n", b"END"):
        writer.write(piece)
        await writer.drain()
    received = await setup.qemu.wait_received(b"END")
    assert received == b"abc\rdef\rg\nh\r\rEND"
    assert await read_until(reader, b"END") == b"abc\rdef\rg\nh\r\rEND"  # the guest's echo
    await close(writer)


@pytest.mark.asyncio
async def test_0xff_is_escaped_both_ways(setup: Setup) -> None:
    reader, writer = await telnet_client(setup.telnet)
    writer.write(bytes([0x41, IAC, IAC, 0x42]))  # the client sends A, 0xFF, B
    await setup.qemu.wait_received(b"A\xffB")
    assert await read_until(reader, b"B") == bytes([0x41, IAC, IAC, 0x42])  # echoed, escaped
    await setup.qemu.send(b"\xff\xfe\xff!")
    assert await read_until(reader, b"!") == b"\xff\xff\xfe\xff\xff!"
    await close(writer)


@pytest.mark.asyncio
async def test_negotiation_is_answered_and_stripped(setup: Setup) -> None:
    reader, writer = await telnet_client(setup.telnet)
    acks = [IAC, DO, ECHO, IAC, DO, SGA, IAC, WILL, SGA, IAC, DO, BINARY, IAC, WILL, BINARY]
    requests = [
        IAC, DO, TIMING_MARK,  # unsupported on our side -> WONT
        IAC, WILL, NAWS,  # PuTTY offers its window size -> DONT (ignored)
        IAC, SB, NAWS, 0, IAC, IAC, 0, 24, IAC, SE,  # width 255 x 24, IAC doubled: skipped
        IAC, WILL, TTYPE,  # -> DONT
        IAC, DONT, ECHO,  # the client wants to echo itself after all -> WONT ECHO
        IAC, IP,  # interrupt -> Ctrl-C for the guest
        IAC, 241,  # NOP: ignored
    ]  # fmt: skip
    for byte in [*acks, *requests, *b"X"]:  # one byte at a time: every split of a sequence
        writer.write(bytes([byte]))
        await writer.drain()
    received = await setup.qemu.wait_received(b"X")
    assert received == b"\x03X"
    replies = await read_until(reader, b"X")
    assert replies == bytes(
        [IAC, WONT, TIMING_MARK, IAC, DONT, NAWS, IAC, DONT, TTYPE, IAC, WONT, ECHO, 3, *b"X"]
    )
    await close(writer)


@pytest.mark.asyncio
async def test_two_clients_share_output_and_input(setup: Setup) -> None:
    (r1, w1), (r2, w2) = await telnet_client(setup.telnet), await telnet_client(setup.telnet)
    assert setup.telnet.connection_count == 2
    w1.write(b"one\r\n")
    await setup.qemu.wait_received(b"one\r")
    w2.write(b"two\r\n")
    await setup.qemu.wait_received(b"one\rtwo\r")
    assert await read_until(r1, b"two\r") == b"one\rtwo\r"
    assert await read_until(r2, b"two\r") == b"one\rtwo\r"
    await close(w1)
    await close(w2)


@pytest.mark.asyncio
async def test_connections_end_when_qemu_exits(setup: Setup) -> None:
    reader, writer = await telnet_client(setup.telnet)
    await setup.qemu.close()
    rest = await asyncio.wait_for(reader.read(), 5)  # to end of stream
    assert rest == NOTICE_EXITED
    await close(writer)


@pytest.mark.asyncio
async def test_stop_closes_connections(setup: Setup) -> None:
    reader, writer = await telnet_client(setup.telnet)
    await setup.telnet.stop()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert setup.telnet.connection_count == 0
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", setup.telnet.port)
    await close(writer)


@pytest.mark.asyncio
@pytest.mark.skipif(shutil.which("telnet") is None, reason="no telnet client installed")
async def test_real_telnet_client(setup: Setup) -> None:
    """The distribution's ``telnet`` on a pseudo-terminal: character mode, Enter arrives as CR."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        ["telnet", "127.0.0.1", str(setup.telnet.port)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        env={**os.environ, "TERM": "xterm"},
    )
    os.close(slave)
    loop = asyncio.get_running_loop()
    output = bytearray()
    changed = asyncio.Event()

    def on_readable() -> None:
        try:
            output.extend(os.read(master, 65536))
        except OSError:  # EIO: telnet exited
            loop.remove_reader(master)
        changed.set()

    async def wait_output(text: bytes) -> None:
        async with asyncio.timeout(10):
            while text not in output:
                await changed.wait()
                changed.clear()

    loop.add_reader(master, on_readable)
    try:
        await wait_output(b"~# ")  # the scrollback
        os.write(master, "héllo\r".encode())  # the tty is raw now: Enter is a CR
        received = await setup.qemu.wait_received(b"\r")
        assert received == "héllo\r".encode()  # 8-bit clean (BINARY), one CR per Enter
        await setup.qemu.send(b"from guest\r\n")
        await wait_output(b"from guest")
    finally:
        loop.remove_reader(master)
        os.close(master)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_port_requires_start() -> None:
    telnet = TelnetServer(SerialHub(Path("/nonexistent/serial.sock")))
    with pytest.raises(RuntimeError, match="not started"):
        _ = telnet.port


# --- the WebSocket bridges -----------------------------------------------------------------


def ws_app(hub: SerialHub, vnc: Path) -> Starlette:
    async def serial_route(ws: WebSocket) -> None:
        await serve_serial(ws, hub)

    async def vnc_route(ws: WebSocket) -> None:
        await serve_vnc(ws, vnc)

    return Starlette(
        routes=[WebSocketRoute("/serial", serial_route), WebSocketRoute("/vnc", vnc_route)]
    )


async def recv_until_closed(ws: ClientConnection) -> bytes:
    """Every binary frame until the server closes the connection."""
    data = b""
    async with asyncio.timeout(10):
        try:
            while True:
                frame = await ws.recv()
                assert isinstance(frame, bytes)
                data += frame
        except ConnectionClosed:
            return data


@pytest.mark.asyncio
async def test_websocket_serial_both_ways_until_the_hub_stops(setup: Setup) -> None:
    async with serve_app(ws_app(setup.hub, Path("/nonexistent"))) as port:
        ws = await ws_connect(f"ws://127.0.0.1:{port}/serial")
        assert await ws.recv() == BOOT_LOG  # the scrollback, as a binary frame
        await ws.send("ls\r")  # xterm.js onData: text
        await ws.send(b"\xff\x1b[A")  # or binary
        assert await setup.qemu.wait_received(b"ls\r\xff\x1b[A")
        await setup.qemu.send(b"from guest\r\n")
        seen = b""
        while b"from guest" not in seen:
            seen += await asyncio.wait_for(ws.recv(), 5)  # type: ignore[operator]
        await setup.hub.stop()
        assert (await recv_until_closed(ws)).endswith(NOTICE_STOPPED)
        assert ws.close_code == 1001


@pytest.mark.asyncio
async def test_websocket_serial_slow_client_is_dropped() -> None:
    with short_dir() as workdir:
        qemu = FakeSerialPeer(workdir / "serial.sock", echo=False)
        hub = SerialHub(qemu.path, scrollback_bytes=16 * 1024, client_queue_bytes=256 * 1024)
        async with qemu, hub, serve_app(ws_app(hub, workdir / "vnc.sock")) as port:
            ws = await ws_connect(f"ws://127.0.0.1:{port}/serial", max_queue=1)
            await qemu.send(b"first\r\n")
            assert await asyncio.wait_for(ws.recv(), 5) == b"first\r\n"  # subscribed
            block = os.urandom(64 * 1024)
            async with asyncio.timeout(20):
                while hub.subscriber_count:  # the browser reads nothing meanwhile
                    await qemu.send(block)
            data = await recv_until_closed(ws)
            assert data.endswith(NOTICE_SLOW)
            assert ws.close_code == 1013


@pytest.mark.asyncio
async def test_websocket_vnc_pipes_bytes_with_the_binary_subprotocol() -> None:
    with short_dir() as workdir:
        vnc = FakeSerialPeer(workdir / "vnc.sock", boot_log=b"RFB 003.008\n")  # echoes
        async with vnc, serve_app(ws_app(SerialHub(workdir / "s.sock"), vnc.path)) as port:
            url = f"ws://127.0.0.1:{port}/vnc"
            async with ws_connect(url, subprotocols=["binary"]) as novnc:
                assert novnc.subprotocol == "binary"
                assert await novnc.recv() == b"RFB 003.008\n"
                await novnc.send(b"RFB 003.008\n\x01")
                assert await novnc.recv() == b"RFB 003.008\n\x01"
                async with ws_connect(url) as other:  # a second client, no subprotocol
                    assert other.subprotocol is None
                    assert await other.recv() == b"RFB 003.008\n"
                    await other.send("text")  # RFB is binary
                    await other.wait_closed()
                    assert other.close_code == 1003
                assert vnc.connections == 2
                await vnc.close()  # QEMU exits
                assert await recv_until_closed(novnc) == b""
                assert novnc.close_code == 1000


@pytest.mark.asyncio
async def test_websocket_vnc_closes_when_the_socket_is_missing() -> None:
    with short_dir() as workdir:
        app = ws_app(SerialHub(workdir / "s.sock"), workdir / "vnc.sock")
        async with serve_app(app) as port:
            url = f"ws://127.0.0.1:{port}/vnc"
            async with ws_connect(url, subprotocols=["binary"]) as ws:
                await ws.wait_closed()
                assert ws.close_code == 1011
                assert ws.close_reason == "VNC console unavailable; is the node running?"


# --- the VNC TCP proxy ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_vnc_tcp_proxy_pipes_each_client_to_its_own_connection() -> None:
    with short_dir() as workdir:
        vnc = FakeSerialPeer(workdir / "vnc.sock", boot_log=b"RFB 003.008\n")
        async with vnc, VncTcpProxy(vnc.path) as proxy:
            clients = [await asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(2)]
            for i, (reader, writer) in enumerate(clients):
                assert await reader.readexactly(12) == b"RFB 003.008\n"
                writer.write(b"client %d" % i)
                assert await reader.readexactly(8) == b"client %d" % i
            assert vnc.connections == 2
            assert proxy.connection_count == 2
            reader = clients[0][0]
            await vnc.close()  # QEMU exits: the proxy closes its clients
            assert await asyncio.wait_for(reader.read(), 5) == b""
            for _, writer in clients:
                await close(writer)


@pytest.mark.asyncio
async def test_vnc_tcp_proxy_without_qemu_closes_the_client() -> None:
    with short_dir() as workdir:
        async with VncTcpProxy(workdir / "vnc.sock") as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            assert await asyncio.wait_for(reader.read(), 5) == b""
            await close(writer)
