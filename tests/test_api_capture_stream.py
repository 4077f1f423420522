"""The live capture stream, ``GET /api/links/{id}/capture/stream``, read as ``wireshark -k -i -``
would read it: a pcap global header, then records while the guests ping.

Two nodes on the test disk get 10.0.0.1/24 and 10.0.0.2/24 on eth1, typed on their serial
consoles, and a link between them. The stream puts the link through a relay while someone reads
it; once no reader is left and no capture or impairment needs the relay, the link is direct
again.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import struct
import subprocess
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from support.api_pair import api_pair
from support.console import SerialShell
from support.server import Server

_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict, dict]]:
    with api_pair(tmp_path_factory, ("s1", "s2"), vnc=False) as started:
        yield started


def _records(data: bytes) -> tuple[list[bytes], int]:
    """The frames of the complete records after the global header, and where they end."""
    at, frames = _GLOBAL.size, []
    while at + _RECORD.size <= len(data):
        incl = _RECORD.unpack_from(data, at)[2]
        if at + _RECORD.size + incl > len(data):
            break
        frames.append(data[at + _RECORD.size : at + _RECORD.size + incl])
        at += _RECORD.size + incl
    return frames, at


def _icmp_echo(frames: list[bytes]) -> list[int]:
    """ICMP types (8 request, 0 reply) of the IPv4 echo frames between the two guests."""
    types = []
    for frame in frames:
        if len(frame) > 34 and frame[12:14] == b"\x08\x00" and frame[23] == 1:
            ihl = (frame[14] & 0x0F) * 4
            if frame[26:30] in (bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])):
                types.append(frame[14 + ihl])
    return types


async def _relayed(api: httpx.AsyncClient, link_id: str) -> bool:
    reply = await api.get(f"/api/links/{link_id}")
    assert reply.status_code == 200, reply.text
    return reply.json()["relayed"]


async def _until_no_reader(api: httpx.AsyncClient, link_id: str, timeout: float = 20) -> None:
    """The server counts a reader out when its connection closes: wait for that."""
    async with asyncio.timeout(timeout):
        while (await api.get(f"/api/links/{link_id}")).json()["readers"]:
            await asyncio.sleep(0.1)


async def _until_direct(api: httpx.AsyncClient, link_id: str, timeout: float = 20) -> None:
    """The server notices a reader leave when its connection closes: wait for that."""
    async with asyncio.timeout(timeout):
        while await _relayed(api, link_id):
            await asyncio.sleep(0.1)


def _ping_ok(output: str) -> bool:
    return bool(re.search(r"\b[1-9]\d* packets received", output))


async def _read_stream(
    api: httpx.AsyncClient, link_id: str, shell: SerialShell, *, capturing: bool = False
) -> bytes:
    """Open the stream, ping while it is read, return what was read (header and records)."""
    async with api.stream("GET", f"/api/links/{link_id}/capture/stream") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/vnd.tcpdump.pcap"
        chunks = response.aiter_raw()
        try:
            data = await _read_until_pings(api, link_id, shell, chunks)
        finally:
            await chunks.aclose()
        assert (await api.get(f"/api/links/{link_id}")).json()["capturing"] is capturing
    return data


async def _read_until_pings(
    api: httpx.AsyncClient, link_id: str, shell: SerialShell, chunks: AsyncIterator[bytes]
) -> bytes:
    data = b""
    async with asyncio.timeout(30):
        while len(data) < _GLOBAL.size:  # the header comes first, before any frame
            data += await anext(chunks)
    # The header is written once the reader is subscribed: the relay is in the link now.
    assert await _relayed(api, link_id) is True
    assert (await api.get(f"/api/links/{link_id}")).json()["readers"] == 1
    ping = asyncio.create_task(shell.run("ping -c 5 -W 2 10.0.0.2", timeout=120))
    try:
        async with asyncio.timeout(90):
            while True:
                types = _icmp_echo(_records(data)[0])
                if types.count(8) >= 3 and types.count(0) >= 3:
                    break
                data += await anext(chunks)
    finally:
        _, output = await ping
    assert _ping_ok(output), output
    return data


def test_live_stream_as_wireshark_reads_it(pair: tuple[Server, dict, dict]) -> None:
    server, n1, n2 = pair

    async def scenario() -> None:
        s1 = await SerialShell.open(server, n1)
        s2 = await SerialShell.open(server, n2)
        api = server.async_client()
        try:
            for shell, address in ((s1, "10.0.0.1/24"), (s2, "10.0.0.2/24")):
                up = f"ip addr add {address} dev eth1 && ip link set eth1 up"
                code, out = await shell.run(up)
                assert code == 0, out
            created = await api.post("/api/links", json={"a": "s1:eth1", "b": "s2:eth1"})
            assert created.status_code == 201, created.text
            link = created.json()["id"]
            assert created.json()["relayed"] is False
            for _ in range(5):  # the first ping also settles ARP
                if _ping_ok((await s1.run("ping -c 1 -W 2 10.0.0.2", timeout=60))[1]):
                    break
            else:
                pytest.fail("the guests cannot ping each other over the direct link")

            # A reader, as `curl -N URL | wireshark -k -i -`: the header, then the pings.
            data = await _read_stream(api, link, s1)
            magic, major, minor, _, _, snaplen, linktype = _GLOBAL.unpack_from(data)
            assert (hex(magic), major, minor, linktype) == ("0xa1b2c3d4", 2, 4, 1)
            assert snaplen >= 1514
            frames, end = _records(data)
            assert frames and end > _GLOBAL.size

            # Closed: nobody reads, nothing else needs the relay: direct again, and it works.
            await _until_direct(api, link)
            assert not (server.data_dir / "links" / link).exists(), "the relay was not removed"
            assert _ping_ok((await s1.run("ping -c 2 -W 2 10.0.0.2", timeout=60))[1])

            # tshark reads the bytes from a pipe, as Wireshark does (complete records only:
            # a reader that stops mid-record leaves a partial one behind).
            tshark = shutil.which("tshark")
            if tshark is not None:
                done = subprocess.run(
                    [tshark, "-r", "-", "-n", "-Y", "icmp", "-T", "fields", "-e", "icmp.type"],
                    input=data[:end], capture_output=True, timeout=120, check=False,
                )  # fmt: skip
                assert done.returncode == 0, done.stderr.decode(errors="replace")
                types = done.stdout.decode().split()
                assert types.count("8") >= 3 and types.count("0") >= 3, types

            # A reader while the link is also captured to a file: when the reader leaves, the
            # capture still needs the relay; once the capture stops too, the link is direct.
            started = await api.post(f"/api/links/{link}/capture/start")
            assert started.json()["relayed"] is True
            data = await _read_stream(api, link, s1, capturing=True)
            assert data[:4] == struct.pack("<I", 0xA1B2C3D4)
            await _until_no_reader(api, link)
            assert await _relayed(api, link) is True
            stopped = await api.post(f"/api/links/{link}/capture/stop")
            assert stopped.json()["relayed"] is False
            assert _ping_ok((await s1.run("ping -c 2 -W 2 10.0.0.2", timeout=60))[1])
        finally:
            await api.aclose()
            await s1.close()
            await s2.close()

    try:
        asyncio.run(scenario())
    finally:
        server.kill_nodes()


def test_stream_of_an_unknown_link_is_404(pair: tuple[Server, dict, dict]) -> None:
    server, _, _ = pair
    with server.client() as client:
        reply = client.get("/api/links/nope/capture/stream")
    assert reply.status_code == 404
    assert "no link" in reply.json()["detail"]
