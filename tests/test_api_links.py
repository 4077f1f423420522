"""Links through the API between real guests: ping, down/up, capture, delay, loss.

Two nodes on the test disk get 10.0.0.1/24 and 10.0.0.2/24 on eth1, typed on their serial
consoles. The link is added while both run (no restart, no hot-plug).
"""

from __future__ import annotations

import asyncio
import re
import struct
from collections.abc import Iterator

import pytest

from support.api_pair import api_pair
from support.console import SerialShell
from support.server import Server


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict, dict]]:
    with api_pair(tmp_path_factory, ("r1", "r2")) as started:
        yield started


def _ping_ok(output: str) -> bool:
    return bool(re.search(r"\b[1-9]\d* packets received", output))


def _rtts(output: str) -> list[float]:
    return [float(m) for m in re.findall(r"time=([\d.]+) ms", output)]


def test_ping_down_up_capture_delay_loss(pair: tuple[Server, dict, dict]) -> None:
    server, r1, r2 = pair

    async def scenario() -> None:
        s1 = await SerialShell.open(server, r1)
        s2 = await SerialShell.open(server, r2)
        for shell, address in ((s1, "10.0.0.1/24"), (s2, "10.0.0.2/24")):
            assert (await shell.run(f"ip addr add {address} dev eth1 && ip link set eth1 up"))[
                0
            ] == 0
        api = server.async_client()

        async def ping(count: int = 3) -> tuple[int, str]:
            return await s1.run(f"ping -c {count} -W 2 10.0.0.2", timeout=120)

        # No cable yet: nothing answers.
        assert not _ping_ok((await ping(1))[1])
        created = await api.post("/api/links", json={"a": "r1:eth1", "b": "r2:eth1"})
        assert created.status_code == 201, created.text
        link = created.json()
        assert (link["a"], link["b"], link["relayed"]) == ("r1:eth1", "r2:eth1", False)
        assert _ping_ok((await ping())[1])

        # An interface carries one link at most.
        again = await api.post("/api/links", json={"a": "r2:eth1", "b": "r1:eth0"})
        assert again.status_code == 409 and "already carries the link" in again.json()["detail"]

        # Down: the carrier drops in both guests; up: it comes back.
        down = await api.patch(f"/api/links/{link['id']}", json={"state": "down"})
        assert down.json()["state"] == "down"
        assert not _ping_ok((await ping(2))[1])
        assert "NO-CARRIER" in (await s2.run("ip link show eth1"))[1]
        await api.patch(f"/api/links/{link['id']}", json={"state": "up"})
        await s1.run("ip link show eth1")
        assert _ping_ok((await ping())[1])

        # Capture: the relay joins the link while it carries traffic.
        started = await api.post(f"/api/links/{link['id']}/capture/start")
        assert started.json()["relayed"] is True and started.json()["capturing"] is True
        assert _ping_ok((await ping())[1])
        await api.post(f"/api/links/{link['id']}/capture/stop")
        pcap = (await api.get(f"/api/links/{link['id']}/capture")).content
        icmp = _icmp_types(pcap)
        assert icmp.count(8) >= 3 and icmp.count(0) >= 3, icmp

        # 100 ms each way shows in the round trip; back to direct when cleared.
        delay = {"a_to_b": {"delay_ms": 100}, "b_to_a": {"delay_ms": 100}}
        impaired = await api.patch(f"/api/links/{link['id']}", json={"impairment": delay})
        assert impaired.json()["relayed"] is True
        _, output = await ping()
        assert _ping_ok(output) and min(_rtts(output)) >= 200, output
        lossy = {"a_to_b": {"loss_pct": 100}}
        await api.patch(f"/api/links/{link['id']}", json={"impairment": lossy})
        assert not _ping_ok((await ping(2))[1])
        cleared = await api.patch(f"/api/links/{link['id']}", json={"impairment": {}})
        assert cleared.json()["relayed"] is False
        _, output = await ping()
        assert _ping_ok(output) and max(_rtts(output)) < 200, output

        # Removed: the cable is gone.
        assert (await api.delete(f"/api/links/{link['id']}")).status_code == 204
        assert not _ping_ok((await ping(1))[1])
        await api.aclose()
        await s1.close()
        await s2.close()

    asyncio.run(scenario())


def _icmp_types(pcap: bytes) -> list[int]:
    """ICMP types of the IPv4 frames in a classic pcap file."""
    magic = struct.unpack("<I", pcap[:4])[0]
    assert magic == 0xA1B2C3D4, hex(magic)
    at, types = 24, []
    while at + 16 <= len(pcap):
        incl = struct.unpack("<IIII", pcap[at : at + 16])[2]
        frame = pcap[at + 16 : at + 16 + incl]
        at += 16 + incl
        if frame[12:14] == b"\x08\x00" and frame[23] == 1:  # IPv4, ICMP
            ihl = (frame[14] & 0x0F) * 4
            types.append(frame[14 + ihl])
    return types


def test_link_refusals(pair: tuple[Server, dict, dict]) -> None:
    server, _, _ = pair
    with server.client() as client:
        for body, status, detail in (
            ({"a": "r1:eth9", "b": "r2:eth0"}, 400, "r1:eth9 does not exist: r1 has 2 NICs"),
            ({"a": "r1:eth0", "b": "r1:eth0"}, 400, "not r1:eth0 to itself"),
            ({"a": "r1-eth0", "b": "r2:eth0"}, 400, "an endpoint is NODE:ethN"),
            ({"a": "zz:eth0", "b": "r2:eth0"}, 404, "no node"),
            ({"lab": "nolab", "a": "r1:eth0", "b": "r2:eth0"}, 404, "no lab named 'nolab'"),
        ):
            response = client.post("/api/links", json=body)
            assert response.status_code == status, (body, response.text)
            assert detail in response.json()["detail"]
        assert client.get("/api/links/nope").status_code == 404
