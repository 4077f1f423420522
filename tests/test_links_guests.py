"""Links between two real guests (TCG): direct, relayed with capture and impairment, down/up.

The guests boot once for the module; each test leaves the cable unplugged. Guest shells are
blocking, so async tests type on them from a worker thread (``asyncio.to_thread``) while the
relay runs in the test's event loop. Timing checks are lower bounds only.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from support.bootdisk import boot_disk
from support.fake_peers import short_dir
from support.netguests import NetGuest, Ping, start_pair
from virtlab.links import Impairment, Relay, connect_direct, connect_via, disconnect

Pair = tuple[NetGuest, NetGuest]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    disk = boot_disk(tmp_path_factory)
    with short_dir("vlnet-") as root, start_pair(disk, root) as guests:
        yield guests


@pytest.fixture
def direct(pair: Pair) -> Iterator[Pair]:
    a, b = pair
    connect_direct(a.endpoint, b.endpoint)
    try:
        yield pair
    finally:
        disconnect(a.endpoint, b.endpoint)


@pytest_asyncio.fixture
async def relayed(pair: Pair) -> AsyncIterator[Relay]:
    a, b = pair
    with short_dir("vlrelay-") as link_dir:
        relay = Relay(link_dir, a.endpoint, b.endpoint, seed=8)
        await relay.start()
        connect_via(a.endpoint, relay.a_sock, b.endpoint, relay.b_sock)
        try:
            yield relay
        finally:
            disconnect(a.endpoint, b.endpoint, relay_socks=(relay.a_sock, relay.b_sock))
            await relay.stop()


async def ping(src: NetGuest, dst: NetGuest, count: int = 3, wait_s: int = 2) -> Ping:
    return await asyncio.to_thread(src.ping, dst.ip, count, wait_s)


def test_direct_link_pings_and_unplugging_stops_it(pair: Pair) -> None:
    a, b = pair
    assert not a.ping(b.ip, count=1, wait_s=1).ok  # no cable yet
    connect_direct(a.endpoint, b.endpoint)
    try:
        result = a.ping(b.ip)
        assert result.ok and result.received == 3, result.output
    finally:
        disconnect(a.endpoint, b.endpoint)
    assert not a.ping(b.ip, count=2, wait_s=1).ok


def test_link_down_and_up_through_qmp(direct: Pair) -> None:
    a, b = direct
    assert a.ping(b.ip, count=1).ok
    a.set_link(False)
    try:
        assert not a.ping(b.ip, count=2, wait_s=1).ok
    finally:
        a.set_link(True)
    assert a.ping(b.ip).ok


def icmp_types(pcap: bytes) -> list[int]:
    """ICMP types of the IPv4 frames in a classic pcap file (read by hand)."""
    assert struct.unpack_from("<I", pcap)[0] == 0xA1B2C3D4
    types, at = [], 24
    while at < len(pcap):
        incl = struct.unpack_from("<I", pcap, at + 8)[0]
        eth = pcap[at + 16 : at + 16 + incl]
        at += 16 + incl
        if eth[12:14] == b"\x08\x00" and eth[14 + 9] == 1:  # IPv4, protocol ICMP
            ihl = (eth[14] & 0x0F) * 4
            types.append(eth[14 + ihl])
    return types


@pytest.mark.asyncio
async def test_capture_holds_echo_requests_and_replies(pair: Pair, relayed: Relay) -> None:
    a, b = pair
    capture = relayed.link_dir / "ping.pcap"
    relayed.start_capture(capture)
    result = await ping(a, b)
    relayed.stop_capture()
    assert result.ok, result.output
    types = icmp_types(capture.read_bytes())
    assert types.count(8) >= 3 and types.count(0) >= 3, types  # echo request, echo reply
    assert relayed.counters("a_to_b").forwarded >= 3
    assert relayed.counters("b_to_a").forwarded >= 3


@pytest.mark.asyncio
async def test_delay_shows_in_round_trip_times(pair: Pair, relayed: Relay) -> None:
    a, b = pair
    for direction in ("a_to_b", "b_to_a"):
        relayed.set_impairment(direction, Impairment(delay_ms=100))  # type: ignore[arg-type]
    result = await ping(a, b)
    assert result.ok and result.rtts_ms, result.output
    assert min(result.rtts_ms) >= 200.0, result.output


@pytest.mark.asyncio
async def test_total_loss_stops_the_ping_and_removing_it_recovers(
    pair: Pair, relayed: Relay
) -> None:
    a, b = pair
    relayed.set_impairment("a_to_b", Impairment(loss_pct=100))
    lost = await ping(a, b, count=2, wait_s=1)
    assert not lost.ok and lost.received == 0, lost.output
    assert relayed.counters("a_to_b").dropped_by_loss >= 2
    relayed.set_impairment("a_to_b", Impairment())
    back = await ping(a, b)
    assert back.ok, back.output


def test_nic_sockets_are_in_the_node_directories(pair: Pair) -> None:
    for guest in pair:
        assert guest.endpoint.sock.is_socket()
        assert not guest.endpoint.peer.exists()  # every test leaves the cable unplugged
        assert isinstance(guest.endpoint.node_dir, Path)
