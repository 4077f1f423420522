"""Console tickets: telnet and VNC ports that let a connection in only with a ticket.

Tests may listen on loopback only, so the real-guest tests run a server with
``VIRTLAB_CONSOLE_TICKETS=always`` on 127.0.0.1: the same mechanism ``auto`` turns on for a
console host beyond loopback (the rule itself, and the refusal of ``never`` there, are tested
on their own). One guest (TCG, the tiny test disk) serves the module.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from support.bootdisk import boot_disk
from support.fake_peers import FakeSerialPeer, read_until, short_dir
from support.rfb import Rfb, RfbRefused, assert_not_blank, des_answer
from support.server import Server, free_port
from virtlab.auth.throttle import LoginThrottle
from virtlab.auth.tickets import NodeTickets, TicketBook
from virtlab.consoles import SerialHub, TelnetServer, VncTcpProxy
from virtlab.consoles.rfb_auth import vnc_response
from virtlab.devtools.bootdisk import BOOT_MARKER
from virtlab.settings import Settings

MARKER = BOOT_MARKER.encode()
PROMPT = b"virtlab console ticket: "
REFUSED = b"ticket refused: ask for a new one with `virtlab node console-ticket"


# -- the rule -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "mode", "required"),
    [
        ("127.0.0.1", "auto", False),
        ("127.5.6.7", "auto", False),
        ("::1", "auto", False),
        ("localhost", "auto", False),
        ("0.0.0.0", "auto", True),
        ("", "auto", True),  # every address
        ("192.0.2.10", "auto", True),
        ("::", "auto", True),
        ("lab.example.org", "auto", True),
        ("127.0.0.1", "always", True),
        ("127.0.0.1", "never", False),
    ],
)
def test_tickets_are_required_beyond_loopback(host: str, mode: str, required: bool) -> None:
    settings = Settings(console_host=host, console_tickets=mode)
    assert settings.console_tickets_required is required
    settings.check_console_exposure()  # none of these is refused


def test_never_beyond_loopback_is_refused_at_start(tmp_path: Path) -> None:
    # A documentation address (TEST-NET-1): nothing could listen there, even by mistake.
    env = {
        **os.environ, "VIRTLAB_CONSOLE_HOST": "192.0.2.10", "VIRTLAB_CONSOLE_TICKETS": "never",
    }  # fmt: skip
    argv = [
        str(Path(sys.executable).with_name("virtlab")), "serve", "--host", "127.0.0.1",
        "--port", str(free_port()), "--data-dir", str(tmp_path / "data"),
    ]  # fmt: skip
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    message = done.stderr
    assert "console ports on 192.0.2.10 would let anyone on that network reach root shells" in (
        message
    )
    assert "VIRTLAB_CONSOLE_TICKETS=auto" in message and "VIRTLAB_CONSOLE_HOST=127.0.0.1" in message


def test_vnc_des_matches_the_reference_implementation() -> None:
    # The VNC password file of "password" is DES("password") under the fixed key
    # 23 82 107 6 35 78 88 7 in the reference's bit order: dbd83cfd727a1458.
    fixed = bytes([23, 82, 107, 6, 35, 78, 88, 7]).decode("latin-1")
    assert vnc_response(fixed, b"password" * 2).hex() == "dbd83cfd727a1458" * 2


# -- telnet against a fake serial socket (a controllable clock for expiry) -------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.asyncio
async def test_telnet_refuses_an_expired_ticket_and_takes_a_live_one() -> None:
    clock = Clock()
    book = TicketBook(ttl=60, clock=clock)
    with short_dir() as workdir:
        async with FakeSerialPeer(workdir / "serial.sock", boot_log=b"booted\r\n# ") as qemu:
            hub = SerialHub(qemu.path)
            await hub.start()
            gate = NodeTickets(book, "n1id", "n1")
            async with TelnetServer(hub, tickets=gate) as telnet:
                stale = book.issue("n1id", "telnet").secret
                clock.now += 61
                refused = await _telnet(telnet.port, stale)
                assert REFUSED + b" n1`" in refused and b"booted" not in refused

                other_node = book.issue("n2id", "telnet").secret
                assert REFUSED in await _telnet(telnet.port, other_node)
                assert REFUSED in await _telnet(telnet.port, "x" * 200)  # too long

                live = book.issue("n1id", "telnet").secret
                reader, writer = await asyncio.open_connection("127.0.0.1", telnet.port)
                await read_until(reader, PROMPT)
                writer.write(b"oops\x7f\x7f\x7f\x7f" + live.encode() + b"\r\n")  # backspaces
                await read_until(reader, b"booted\r\n# ")  # the scrollback, then live
                writer.write(b"ls\r\n")
                await qemu.wait_received(b"ls\r")
                writer.close()
                await writer.wait_closed()
            await hub.stop()


async def _telnet(port: int, line: str) -> bytes:
    """Everything a telnet port says to a client that answers the prompt with ``line``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await read_until(reader, PROMPT)
    writer.write(line.encode() + b"\r\n")
    async with asyncio.timeout(10):
        said = await reader.read()  # until the port closes the connection
    writer.close()
    return said


# -- wrong tickets are throttled per port and client address, like failed logins ---------------


LOCKED = b"too many wrong tickets from 127.0.0.1 at the telnet port of node n1; try again in"


@pytest.mark.asyncio
async def test_too_many_wrong_telnet_tickets_lock_that_address_out_for_a_while() -> None:
    clock = Clock()
    book = TicketBook(ttl=600, clock=clock)  # the default throttle: 5 wrong tickets, 60 s
    with short_dir() as workdir:
        async with FakeSerialPeer(workdir / "serial.sock", boot_log=b"booted\r\n# ") as qemu:
            hub = SerialHub(qemu.path)
            await hub.start()
            gate = NodeTickets(book, "n1id", "n1")
            async with TelnetServer(hub, tickets=gate) as telnet:
                live = book.issue("n1id", "telnet").secret
                for attempt in range(4):
                    said = await _telnet(telnet.port, f"guess{attempt}")
                    assert REFUSED in said and LOCKED not in said, said
                said = await _telnet(telnet.port, "guess4")  # the fifth: locked out from now
                assert LOCKED + b" 60 s" in said and b"virtlab node console-ticket n1`" in said

                # No prompt now, and a live ticket does not help (nor is it used up).
                reader, writer = await asyncio.open_connection("127.0.0.1", telnet.port)
                async with asyncio.timeout(10):
                    said = await reader.read()
                writer.close()
                assert LOCKED in said and PROMPT not in said and b"booted" not in said

                clock.now += 61  # the lockout is over: the same ticket lets it in
                reader, writer = await asyncio.open_connection("127.0.0.1", telnet.port)
                await read_until(reader, PROMPT)
                writer.write(live.encode() + b"\r\n")
                await read_until(reader, b"booted\r\n# ")
                writer.close()
                await writer.wait_closed()

                # Another node's port, and the VNC port of this one, count on their own.
                assert not gate.wait_for("vnc", "127.0.0.1")
                assert not NodeTickets(book, "n2id", "n2").wait_for("telnet", "127.0.0.1")
            await hub.stop()


@pytest.mark.asyncio
async def test_too_many_wrong_vnc_tickets_fail_authentication_with_the_reason() -> None:
    book = TicketBook(throttle=LoginThrottle(limit=2, lockout=60))
    with short_dir() as workdir:
        qemu = await asyncio.start_unix_server(_fake_qemu_vnc, workdir / "vnc.sock")
        gate = NodeTickets(book, "n1id", "n1")
        async with qemu, VncTcpProxy(workdir / "vnc.sock", tickets=gate) as proxy:
            live = book.issue("n1id", "vnc").secret
            reasons = []
            for password in ("wrong123", "wrong456", live):
                rfb, writer = await _vnc(proxy.port)
                with pytest.raises(RfbRefused) as refused:
                    await rfb.handshake(password=password)
                reasons.append(str(refused.value))
                writer.close()
            assert reasons[0].startswith("ticket refused")
            locked = "too many wrong tickets from 127.0.0.1 at the vnc port of node n1; try again"
            assert reasons[1].startswith(locked) and reasons[2].startswith(locked), reasons
            assert "console-ticket n1 --kind vnc" in reasons[2]
            assert book.redeem("n1id", "vnc", live), "a refused client used no ticket up"


# -- VNC against a fake QEMU socket: older RFB clients ------------------------------------------


async def _fake_qemu_vnc(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """QEMU's side without a password: version, security None, then a ServerInit naming the
    shared flag it got in ClientInit."""
    writer.write(b"RFB 003.008\n")
    assert await reader.readexactly(12) == b"RFB 003.008\n"
    writer.write(bytes([1, 1]))
    assert await reader.readexactly(1) == bytes([1])
    writer.write(struct.pack(">I", 0))
    (shared,) = await reader.readexactly(1)
    name = f"fake shared={shared}".encode()
    writer.write(struct.pack(">HH16sI", 640, 480, bytes(16), len(name)) + name)
    await writer.drain()
    writer.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("version", [b"RFB 003.003\n", b"RFB 003.007\n", b"RFB 003.889\n"])
async def test_vnc_auth_for_older_and_odd_rfb_versions(version: bytes) -> None:
    book = TicketBook()
    with short_dir() as workdir:
        qemu = await asyncio.start_unix_server(_fake_qemu_vnc, workdir / "vnc.sock")
        gate = NodeTickets(book, "n1id", "n1")
        async with qemu, VncTcpProxy(workdir / "vnc.sock", tickets=gate) as proxy:
            for password in ("wrong123", book.issue("n1id", "vnc").secret):
                reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
                assert await reader.readexactly(12) == b"RFB 003.008\n"
                writer.write(version)
                if version == b"RFB 003.003\n":  # the server chooses: VNC Authentication
                    assert await reader.readexactly(4) == struct.pack(">I", 2)
                else:
                    assert await reader.readexactly(2) == bytes([1, 2])
                    writer.write(bytes([2]))
                writer.write(des_answer(password, await reader.readexactly(16)))
                result = await reader.readexactly(4)
                if password == "wrong123":
                    assert result == struct.pack(">I", 1)
                    if version == b"RFB 003.889\n":  # treated as 3.8: the reason follows
                        (n,) = struct.unpack(">I", await reader.readexactly(4))
                        assert (await reader.readexactly(n)).startswith(b"ticket refused")
                    assert await reader.read() == b""  # closed
                else:
                    assert result == struct.pack(">I", 0)
                    writer.write(bytes([0]))  # ClientInit: exclusive, passed on as it is
                    assert (await reader.read()).endswith(b"fake shared=0")
                writer.close()


# -- a real server and guest ----------------------------------------------------------------------


@dataclass
class Lab:
    server: Server
    node: dict
    stopped: dict


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    server = Server(
        tmp_path_factory.mktemp("data"), env={"VIRTLAB_CONSOLE_TICKETS": "always"}
    ).start()
    try:
        raw = boot_disk(tmp_path_factory)
        with server.client() as admin:
            image = admin.put("/api/images/boot.img", content=raw.read_bytes()).json()["name"]
            nodes = []
            for name in ("t1", "t2"):
                reply = admin.post("/api/nodes", json={"name": name, "image": image, "ram_mb": 128})
                assert reply.status_code == 201, reply.text
                nodes.append(reply.json())
            assert admin.post("/api/nodes/t1/start").json()["state"] == "running"

        async def booted() -> None:  # the serial WebSocket (the web UI's) needs no ticket
            url = server.ws_url(nodes[0]["consoles"]["serial"]["ws"])
            async with connect(url, additional_headers=server.headers) as ws:
                seen = b""
                async with asyncio.timeout(120):
                    while MARKER not in seen:
                        seen += await ws.recv()

        asyncio.run(booted())
        yield Lab(server, nodes[0], nodes[1])
    finally:
        server.kill_nodes()
        server.stop()


def _ticket(client: httpx.Client, node: str, kind: str) -> dict:
    reply = client.post(f"/api/nodes/{node}/console/ticket", json={"kind": kind})
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_the_api_hands_out_tickets_for_running_nodes(lab: Lab) -> None:
    with lab.server.client() as admin:
        telnet, vnc = _ticket(admin, "t1", "telnet"), _ticket(admin, "t1", "vnc")
        stopped = admin.post("/api/nodes/t2/console/ticket", json={"kind": "telnet"})
    assert telnet["required"] and vnc["required"]
    assert re.fullmatch(r"[A-Za-z0-9]{24}", telnet["ticket"])
    assert re.fullmatch(r"[A-Za-z0-9]{8}", vnc["ticket"])  # a VNC password's length
    assert telnet["port"] == lab.node["consoles"]["serial"]["telnet_port"]
    assert vnc["port"] == lab.node["consoles"]["vnc"]["port"]
    assert telnet["host"] == "127.0.0.1" and 0 < telnet["expires_in"] <= 60
    assert stopped.status_code == 409
    assert (
        "t2 is stopped" in stopped.json()["detail"]
        and "virtlab node start t2" in (stopped.json()["detail"])
    )


def test_another_user_gets_no_ticket_for_the_admins_node(lab: Lab) -> None:
    with lab.server.client() as admin:
        password = admin.post("/api/users", json={"name": "mallory"}).json()["password"]
    token = lab.server.login("mallory", password)
    with lab.server.client(token=token) as mallory:
        for ref in ("t1", lab.node["id"]):
            reply = mallory.post(f"/api/nodes/{ref}/console/ticket", json={"kind": "telnet"})
            assert reply.status_code == 404, reply.text
            assert "no node" in reply.json()["detail"]


def test_telnet_without_a_live_ticket_is_refused(lab: Lab) -> None:
    port = lab.node["consoles"]["serial"]["telnet_port"]
    with lab.server.client() as admin:
        used = _ticket(admin, "t1", "telnet")["ticket"]
        vnc_one = _ticket(admin, "t1", "vnc")["ticket"]

    async def attempts() -> None:
        for line in ("", "not-a-ticket", vnc_one):  # none, wrong, another kind's
            said = await _telnet(port, line)
            assert REFUSED + b" t1`" in said and MARKER not in said, said
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await read_until(reader, PROMPT)
        writer.write(used.encode() + b"\r\n")
        await read_until(reader, MARKER, timeout=30)  # let in: the scrollback
        writer.close()
        await writer.wait_closed()
        said = await _telnet(port, used)  # used once already
        assert REFUSED in said and MARKER not in said

    asyncio.run(attempts())


def test_telnet_with_a_fresh_ticket_is_the_console(lab: Lab) -> None:
    port = lab.node["consoles"]["serial"]["telnet_port"]
    with lab.server.client() as admin:
        ticket = _ticket(admin, "t1", "telnet")["ticket"]

    async def session() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await read_until(reader, PROMPT)
        writer.write(ticket.encode() + b"\r\n")
        await read_until(reader, MARKER, timeout=30)
        writer.write(b"echo $((6*7))\r\n")
        await read_until(reader, re.compile(rb"\b42\b"), timeout=60)
        writer.close()
        await writer.wait_closed()

    asyncio.run(session())


def test_the_cli_prints_a_ticket_that_works(lab: Lab) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(Path(sys.executable).with_name("virtlab")), "node", *args], capture_output=True,
            text=True, timeout=120, env={**os.environ, **lab.server.cli_env, "COLUMNS": "200"},
        )  # fmt: skip

    done = cli("console-ticket", "t1")
    assert done.returncode == 0, done.stderr
    port = lab.node["consoles"]["serial"]["telnet_port"]
    assert f"telnet 127.0.0.1 {port}" in done.stdout and "in 60 seconds" in done.stdout
    (ticket,) = re.findall(r"ticket\s+([A-Za-z0-9]{24})", done.stdout)

    async def use() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await read_until(reader, PROMPT)
        writer.write(ticket.encode() + b"\r\n")
        await read_until(reader, MARKER, timeout=30)
        writer.close()

    asyncio.run(use())
    vnc = cli("console-ticket", "t1", "--kind", "vnc", "--json")
    assert vnc.returncode == 0, vnc.stderr
    assert json.loads(vnc.stdout)["port"] == lab.node["consoles"]["vnc"]["port"]
    stopped = cli("console-ticket", "t2")
    assert stopped.returncode == 1 and "t2 is stopped" in stopped.stderr, stopped

    shown = cli("show", "t1")  # says that the ports ask for tickets, and how to get them
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"tickets\s+required at the telnet and VNC ports", shown.stdout), shown.stdout
    assert "virtlab node console-ticket t1 --kind vnc" in shown.stdout
    with lab.server.client() as admin:
        consoles = admin.get("/api/nodes/t1").json()["consoles"]
    assert consoles["tickets_required"] is True
    assert consoles["ticket"] == f"/api/nodes/{lab.node['id']}/console/ticket"


async def _vnc(port: int) -> tuple[Rfb, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return Rfb.over_stream(reader, writer), writer


def test_vnc_without_the_right_ticket_fails_authentication(lab: Lab) -> None:
    port = lab.node["consoles"]["vnc"]["port"]
    with lab.server.client() as admin:
        ticket = _ticket(admin, "t1", "vnc")["ticket"]

    async def attempts() -> None:
        rfb, writer = await _vnc(port)  # security None, as to QEMU: not offered, refused
        assert await rfb.read(12) == b"RFB 003.008\n"
        writer.write(b"RFB 003.008\n")
        assert await rfb.read(2) == bytes([1, 2]), "VNC Authentication alone is offered"
        writer.write(bytes([1]))
        assert await rfb.read(4) == struct.pack(">I", 1)
        writer.close()

        for wrong in ("wrong123", ticket[::-1] if ticket[::-1] != ticket else "zzzzzzzz"):
            rfb, writer = await _vnc(port)
            with pytest.raises(RfbRefused, match=r"ticket refused: .*console-ticket t1 --kind vnc"):
                await rfb.handshake(password=wrong)
            writer.close()

        rfb, writer = await _vnc(port)  # the ticket was not used up by the failures
        width, height, bpp, name = await rfb.handshake(password=ticket)
        assert name.startswith(b"QEMU") and width > 0 and height > 0
        assert_not_blank(await rfb.framebuffer(width, height), bpp)
        writer.close()

        rfb, writer = await _vnc(port)  # but it is used up now
        with pytest.raises(RfbRefused, match="ticket refused"):
            await rfb.handshake(password=ticket)
        writer.close()

    asyncio.run(attempts())


def test_the_web_uis_vnc_needs_no_ticket(lab: Lab) -> None:
    async def browser() -> None:
        url = lab.server.ws_url(lab.node["consoles"]["vnc"]["ws"])
        headers = lab.server.headers
        async with connect(url, subprotocols=["binary"], additional_headers=headers) as ws:
            rfb = Rfb.over_websocket(ws)
            width, height, bpp, _ = await rfb.handshake()
            assert_not_blank(await rfb.framebuffer(width, height), bpp)

    asyncio.run(browser())


def test_on_loopback_node_show_says_no_ticket_is_needed(server: Server) -> None:
    with server.client() as admin:
        image = admin.put("/api/images/plain.img", content=bytes(1 << 20)).json()["name"]
        node = admin.post("/api/nodes", json={"name": "lo1", "image": image}).json()
    assert node["consoles"]["tickets_required"] is False
    done = subprocess.run(
        [str(Path(sys.executable).with_name("virtlab")), "node", "show", "lo1"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, **server.cli_env, "COLUMNS": "200"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert re.search(r"tickets\s+not needed: the console ports listen on loopback", done.stdout)
