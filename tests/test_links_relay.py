"""Links with fake NICs: wiring symlinks, the relay's impairments, pcap capture and live streams.

A :class:`FakeNic` does what QEMU's ``-netdev dgram`` does with unix sockets: it binds
``NODE/nicN.sock`` and sends every frame with ``sendto(NODE/nicN.peer)``, so the kernel
resolves the (symlinked) peer path on every frame. Every wait is on a socket or on the relay's
counters, bounded by ``asyncio.timeout``; timing checks are lower bounds only.
"""

from __future__ import annotations

import asyncio
import errno
import math
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from support.fake_peers import short_dir
from virtlab.errors import Conflict, InvalidRequest
from virtlab.links import (
    Endpoint,
    Impairment,
    PcapFile,
    Relay,
    UdpEndpoint,
    connect_direct,
    connect_via,
    disconnect,
    peer_target,
    plug,
    unplug,
)
from virtlab.links.impairment import Lane, TokenBucket
from virtlab.links.pcap import global_header

MAC_A = bytes.fromhex("525400000001")
MAC_B = bytes.fromhex("525400000002")
ETHERTYPE = b"\x88\xb5"  # IEEE local experimental


def frame(src: bytes, dst: bytes, payload: bytes) -> bytes:
    return dst + src + ETHERTYPE + payload


class FakeNic:
    """A NIC the way QEMU's dgram netdev makes one: bound at nicN.sock, sending to nicN.peer."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        self.sock.bind(str(endpoint.sock))
        self.refused = 0  # frames the kernel refused: nothing at the peer path (ENOENT, …)

    def send(self, data: bytes) -> bool:
        """Send one frame now; ``False`` (and counted) if the peer path leads nowhere."""
        try:
            self.sock.sendto(data, str(self.endpoint.peer))
        except (FileNotFoundError, ConnectionRefusedError):
            self.refused += 1
            return False
        return True

    async def send_wait(self, data: bytes) -> None:
        """Send one frame, waiting while the receiving socket's queue is full (as QEMU does)."""
        loop = asyncio.get_running_loop()
        await loop.sock_sendto(self.sock, data, str(self.endpoint.peer))

    async def recv(self, timeout: float = 10.0) -> bytes:
        async with asyncio.timeout(timeout):
            return await asyncio.get_running_loop().sock_recv(self.sock, 70000)

    async def recv_n(self, n: int, timeout: float = 20.0) -> list[bytes]:
        async with asyncio.timeout(timeout):
            return [await self.recv(timeout) for _ in range(n)]

    def pending(self) -> list[bytes]:
        """What has arrived and not been read, without waiting."""
        got = []
        while True:
            try:
                got.append(self.sock.recv(70000))
            except BlockingIOError:
                return got

    def close(self) -> None:
        self.sock.close()


async def send_all(nic: FakeNic, frames: list[bytes]) -> None:
    for data in frames:
        await nic.send_wait(data)


async def transfer(src: FakeNic, dst: FakeNic, frames: list[bytes]) -> list[bytes]:
    """Send ``frames`` from ``src`` while ``dst`` reads as many (a full receiver holds the link)."""
    sending = asyncio.create_task(send_all(src, frames))
    try:
        got = await dst.recv_n(len(frames))
    finally:
        sending.cancel()
    await asyncio.gather(sending, return_exceptions=True)
    return got


class Collector:
    """Reads everything arriving at a NIC in the background (a guest that keeps up)."""

    def __init__(self, nic: FakeNic) -> None:
        self.nic = nic
        self.frames: list[bytes] = []
        self._task = asyncio.create_task(self._run(nic))

    async def _run(self, nic: FakeNic) -> None:
        while True:
            self.frames.append(await asyncio.get_running_loop().sock_recv(nic.sock, 70000))

    async def close(self) -> list[bytes]:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.frames + self.nic.pending()  # what arrived since it last ran


@dataclass
class Pcap:
    magic: int
    version: tuple[int, int]
    snaplen: int
    linktype: int
    records: list[tuple[float, bytes]]


def parse_pcap(data: bytes) -> Pcap:
    """A tiny classic-pcap reader (little-endian, microsecond timestamps)."""
    magic, major, minor, _, _, snaplen, linktype = struct.unpack_from("<IHHiIII", data)
    records, at = [], 24
    while at < len(data):
        sec, usec, incl, orig = struct.unpack_from("<IIII", data, at)
        assert incl == orig and at + 16 + incl <= len(data), "truncated record"
        records.append((sec + usec / 1e6, data[at + 16 : at + 16 + incl]))
        at += 16 + incl
    return Pcap(magic, (major, minor), snaplen, linktype, records)


@pytest.fixture
def lab() -> Iterator[Path]:
    with short_dir("vllink-") as root:
        for name in ("A", "B", "C"):
            (root / name).mkdir()
        yield root


@dataclass
class Linked:
    root: Path
    relay: Relay
    a: FakeNic
    b: FakeNic


@pytest_asyncio.fixture
async def linked(lab: Path) -> AsyncIterator[Linked]:
    """Fake NICs A.eth1 and B.eth1 joined through a started relay (seeded)."""
    ea, eb = Endpoint(lab / "A", 1), Endpoint(lab / "B", 1)
    a, b = FakeNic(ea), FakeNic(eb)
    relay = Relay(lab / "link", ea, eb, seed=1234)
    await relay.start()
    connect_via(ea, relay.a_sock, eb, relay.b_sock)
    try:
        yield Linked(lab, relay, a, b)
    finally:
        await relay.stop()
        a.close()
        b.close()


# --- wiring -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_direct_wiring_delivers_both_ways(lab: Path) -> None:
    ea, eb = Endpoint(lab / "A", 1), Endpoint(lab / "B", 1)
    a, b = FakeNic(ea), FakeNic(eb)
    try:
        connect_direct(ea, eb)
        assert peer_target(ea) == eb.sock and peer_target(eb) == ea.sock
        assert a.send(frame(MAC_A, MAC_B, b"to b"))
        assert await b.recv() == frame(MAC_A, MAC_B, b"to b")
        assert b.send(frame(MAC_B, MAC_A, b"to a"))
        assert await a.recv() == frame(MAC_B, MAC_A, b"to a")
    finally:
        a.close()
        b.close()


def test_unplugged_and_unlinked_nics_refuse_frames(lab: Path) -> None:
    ea, eb = Endpoint(lab / "A", 1), Endpoint(lab / "B", 1)
    a, b = FakeNic(ea), FakeNic(eb)
    try:
        assert peer_target(ea) is None
        assert not a.send(b"x" * 60)  # no cable: ENOENT, as inside QEMU
        connect_direct(ea, eb)
        assert a.send(b"y" * 60)
        assert b.pending() == [b"y" * 60]
        disconnect(ea, eb)
        assert peer_target(ea) is None and peer_target(eb) is None
        assert not a.send(b"z" * 60) and not b.send(b"z" * 60)
        assert (a.refused, b.refused) == (2, 1)
        assert b.pending() == [] and a.pending() == []
        disconnect(ea, eb)  # idempotent
    finally:
        a.close()
        b.close()


def test_an_interface_carries_one_link(lab: Path) -> None:
    ea, eb, ec = (Endpoint(lab / n, 1) for n in "ABC")
    connect_direct(ea, eb)
    connect_direct(ea, eb)  # idempotent
    connect_direct(eb, ea)  # the same link, named from the other end
    with pytest.raises(Conflict, match=r"A:eth1 already carries another link"):
        connect_direct(ea, ec)
    assert peer_target(ec) is None  # checked before anything was touched
    with pytest.raises(Conflict, match=r"not part of"):
        disconnect(ea, ec)
    with pytest.raises(InvalidRequest, match="to itself"):
        connect_direct(ea, ea)
    # a relay for another link may not take A over either
    with pytest.raises(Conflict, match="already carries another link"):
        connect_via(ea, lab / "l2" / "a.sock", ec, lab / "l2" / "b.sock")
    disconnect(ea, eb)
    # something that is not a symlink at nicN.peer is not a cable of ours
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as squatter:
        squatter.bind(str(ec.peer))
        with pytest.raises(Conflict, match="is not a link symlink"):
            connect_direct(ea, ec)
    assert not list(lab.glob("*/*.tmp"))


@pytest.mark.asyncio
async def test_switching_a_running_link_between_direct_and_relayed(linked: Linked) -> None:
    ea, eb, relay = linked.a.endpoint, linked.b.endpoint, linked.relay
    socks = (relay.a_sock, relay.b_sock)
    assert linked.a.send(b"relayed-1" + bytes(60))
    await linked.b.recv()
    assert relay.counters("a_to_b").forwarded == 1
    connect_direct(ea, eb, relay_socks=socks)
    assert linked.a.send(b"direct" + bytes(60))
    assert (await linked.b.recv()).startswith(b"direct")
    assert relay.counters("a_to_b").frames == 1  # the relay saw nothing of it
    connect_via(ea, relay.a_sock, eb, relay.b_sock)
    assert linked.b.send(b"relayed-2" + bytes(60))
    assert (await linked.a.recv()).startswith(b"relayed-2")
    assert relay.counters("b_to_a").forwarded == 1
    disconnect(ea, eb, relay_socks=socks)
    assert not linked.a.send(bytes(64))


# --- relay: forwarding and capture ------------------------------------------------------------


@pytest.mark.asyncio
async def test_relayed_link_delivers_and_captures_both_ways(linked: Linked) -> None:
    relay = linked.relay
    pcap = linked.root / "cap.pcap"
    relay.start_capture(pcap)
    sent = []
    for i in range(5):
        to_b, to_a = frame(MAC_A, MAC_B, b"ab%d" % i), frame(MAC_B, MAC_A, b"ba%d" % i + bytes(50))
        assert linked.a.send(to_b)
        assert await linked.b.recv() == to_b
        assert linked.b.send(to_a)
        assert await linked.a.recv() == to_a
        sent += [to_b, to_a]
    capture = parse_pcap(pcap.read_bytes())  # readable while the capture runs
    assert capture.magic == 0xA1B2C3D4 and capture.version == (2, 4)
    assert (capture.snaplen, capture.linktype) == (262144, 1)
    assert [data for _, data in capture.records] == sent  # both directions, in time order
    stamps = [ts for ts, _ in capture.records]
    assert stamps == sorted(stamps) and abs(stamps[0] - time.time()) < 60
    relay.stop_capture()
    assert linked.a.send(frame(MAC_A, MAC_B, b"not captured"))
    await linked.b.recv()
    relay.start_capture(pcap)  # continues the same file
    assert linked.a.send(frame(MAC_A, MAC_B, b"captured again"))
    await linked.b.recv()
    records = parse_pcap(pcap.read_bytes()).records
    assert [data for _, data in records] == [*sent, frame(MAC_A, MAC_B, b"captured again")]
    c = relay.counters("a_to_b")
    extra = [frame(MAC_A, MAC_B, b"not captured"), frame(MAC_A, MAC_B, b"captured again")]
    assert (c.frames, c.forwarded) == (7, 7)
    assert c.bytes == sum(len(f) for f in sent[::2] + extra)


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
@pytest.mark.asyncio
async def test_tshark_reads_a_capture_while_it_runs(linked: Linked) -> None:
    pcap = linked.root / "live.pcap"
    linked.relay.start_capture(pcap)
    for i in range(3):
        assert linked.a.send(frame(MAC_A, MAC_B, bytes([i]) * 100))
        await linked.b.recv()
    done = subprocess.run(
        ["tshark", "-r", str(pcap), "-T", "fields", "-e", "eth.src", "-e", "frame.len"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["52:54:00:00:00:01\t114"] * 3


@pytest.mark.asyncio
async def test_frames_to_a_receiver_that_is_not_running_are_counted(lab: Path) -> None:
    ea, eb = Endpoint(lab / "A", 1), Endpoint(lab / "B", 1)
    a = FakeNic(ea)
    relay = Relay(lab / "link", ea, eb)
    await relay.start()
    try:
        connect_via(ea, relay.a_sock, eb, relay.b_sock)
        for _ in range(3):
            assert a.send(bytes(60))
        async with asyncio.timeout(10):
            c = await relay.wait_counters("a_to_b", lambda c: c.frames == 3)
        assert (c.dropped_send, c.forwarded) == (3, 0)
        b = FakeNic(eb)  # B starts: the next frame goes through
        try:
            assert a.send(b"hello" + bytes(60))
            assert (await b.recv()).startswith(b"hello")
            assert relay.counters("a_to_b").forwarded == 1
        finally:
            b.close()
        assert a.send(bytes(60))  # B is gone again (its socket closed): dropped, counted
        async with asyncio.timeout(10):
            await relay.wait_counters("a_to_b", lambda c: c.dropped_send == 4)
    finally:
        await relay.stop()
        a.close()
    assert not relay.a_sock.exists() and not relay.b_sock.exists()


@pytest.mark.asyncio
async def test_a_full_receiver_holds_frames_instead_of_dropping_them(linked: Linked) -> None:
    """Backpressure: B does not read for a while; nothing is lost once it does."""
    frames = [frame(MAC_A, MAC_B, b"%04d" % i + bytes(100)) for i in range(40)]

    sender = asyncio.create_task(send_all(linked.a, frames))
    try:
        async with asyncio.timeout(10):  # the relay holds a frame B's full queue refused
            await linked.relay.wait_counters("a_to_b", lambda c: c.frames > c.forwarded)
        assert linked.relay.counters("a_to_b").dropped_send == 0
        assert await linked.b.recv_n(len(frames)) == frames
        await sender
    finally:
        sender.cancel()
    c = linked.relay.counters("a_to_b")
    assert (c.forwarded, c.dropped_send, c.dropped_queue) == (40, 0, 0)


@pytest.mark.asyncio
async def test_relay_replaces_a_stale_socket_but_not_a_live_relay(lab: Path) -> None:
    ea, eb = Endpoint(lab / "A", 1), Endpoint(lab / "B", 1)
    (lab / "link").mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dead:
        dead.bind(str(lab / "link" / "a.sock"))  # a relay that died left this behind
    first = Relay(lab / "link", ea, eb)
    await first.start()
    try:
        second = Relay(lab / "link", ea, eb)
        with pytest.raises(Conflict, match="another relay is bound"):
            await second.start()
        with pytest.raises(Conflict, match="make a new one"):
            await first.start()
    finally:
        await first.stop()
        await first.stop()  # idempotent


# --- impairment -------------------------------------------------------------------------------


async def blast(linked: Linked, n: int, size: int = 100) -> None:
    """Send ``n`` numbered frames A -> B and wait until the relay has decided on each."""
    before = linked.relay.counters("a_to_b").frames
    await send_all(
        linked.a, [frame(MAC_A, MAC_B, struct.pack("!I", i) + bytes(size)) for i in range(n)]
    )
    async with asyncio.timeout(30):
        await linked.relay.wait_counters(
            "a_to_b",
            lambda c: c.frames == before + n and c.forwarded + c.dropped_by_loss == c.frames,
        )


@pytest.mark.asyncio
async def test_loss_drops_all_none_or_a_seeded_share(linked: Linked) -> None:
    relay = linked.relay
    collector = Collector(linked.b)
    try:
        relay.set_impairment("a_to_b", Impairment(loss_pct=100))
        await blast(linked, 200)
        assert relay.counters("a_to_b").dropped_by_loss == 200
        assert collector.frames == []
        relay.set_impairment("a_to_b", Impairment(loss_pct=0))
        await blast(linked, 200)
        assert relay.counters("a_to_b").dropped_by_loss == 200
        relay.set_impairment("a_to_b", Impairment(loss_pct=30))
        await blast(linked, 1000)
    finally:
        got = await collector.close()
    c = relay.counters("a_to_b")
    lost = c.dropped_by_loss - 200
    assert 230 <= lost <= 370, lost  # binomial(1000, 0.3): sd 14.5; seeded, so always the same
    assert len(got) == c.forwarded == 200 + 1000 - lost


@pytest.mark.asyncio
async def test_delay_holds_every_frame_at_least_that_long(linked: Linked) -> None:
    linked.relay.set_impairment("a_to_b", Impairment(delay_ms=100))
    for _ in range(10):
        assert linked.a.send(frame(MAC_A, MAC_B, struct.pack("!d", time.monotonic())))
    for _ in range(10):
        data = await linked.b.recv()
        (sent,) = struct.unpack("!d", data[14:22])
        assert time.monotonic() - sent >= 0.100
    assert linked.a.send(frame(MAC_B, MAC_A, b"other way"))  # b_to_a is not delayed


@pytest.mark.asyncio
async def test_jitter_varies_latency_but_keeps_order(linked: Linked) -> None:
    linked.relay.set_impairment("a_to_b", Impairment(delay_ms=20, jitter_ms=20))
    frames = [frame(MAC_A, MAC_B, struct.pack("!I", i)) for i in range(50)]
    got = [
        struct.unpack("!I", data[14:18])[0] for data in await transfer(linked.a, linked.b, frames)
    ]
    assert got == list(range(50))


@pytest.mark.asyncio
async def test_rate_limit_paces_frames(linked: Linked) -> None:
    # 200 frames of 1000 bytes at 1600 kbit/s (200 kB/s): about one second on the wire
    linked.relay.set_impairment("a_to_b", Impairment(rate_kbps=1600))
    frames = [frame(MAC_A, MAC_B, bytes(986)) for _ in range(200)]
    start = time.monotonic()
    assert len(await transfer(linked.a, linked.b, frames)) == 200
    elapsed = time.monotonic() - start
    assert elapsed >= 0.9, elapsed
    assert linked.relay.counters("a_to_b").dropped_queue == 0


@pytest.mark.asyncio
async def test_a_full_queue_drops_the_tail(lab: Path) -> None:
    ea, eb = Endpoint(lab / "A", 1), Endpoint(lab / "B", 1)
    a, b = FakeNic(ea), FakeNic(eb)
    relay = Relay(lab / "link", ea, eb, queue_limit=10)
    await relay.start()
    try:
        connect_via(ea, relay.a_sock, eb, relay.b_sock)
        relay.set_impairment("a_to_b", Impairment(delay_ms=60_000))  # nothing leaves
        for _ in range(50):
            await a.send_wait(bytes(60))
        async with asyncio.timeout(10):
            c = await relay.wait_counters("a_to_b", lambda c: c.frames == 50)
        assert (c.dropped_queue, relay.queued("a_to_b")) == (40, 10)
    finally:
        await relay.stop()
        a.close()
        b.close()


@pytest.mark.asyncio
async def test_corruption_flips_payload_bits_never_the_header(linked: Linked) -> None:
    linked.relay.set_impairment("a_to_b", Impairment(corrupt_pct=100))
    frames = [frame(MAC_A, MAC_B, os.urandom(64)) for _ in range(100)]
    for sent, got in zip(frames, await transfer(linked.a, linked.b, frames), strict=True):
        assert got[:14] == sent[:14]
        diff = int.from_bytes(got, "big") ^ int.from_bytes(sent, "big")
        assert diff.bit_count() == 1
    assert linked.relay.counters("a_to_b").corrupted == 100


@pytest.mark.asyncio
async def test_impairment_changes_while_traffic_flows(linked: Linked) -> None:
    relay = linked.relay
    relay.set_impairment("a_to_b", Impairment(loss_pct=100))
    stop = asyncio.Event()

    async def traffic() -> None:
        while not stop.is_set():
            payload = struct.pack("!d", time.monotonic())
            await linked.a.send_wait(frame(MAC_A, MAC_B, payload))
            await asyncio.sleep(0)  # a yield, so the relay runs between frames

    flow = asyncio.create_task(traffic())
    try:
        async with asyncio.timeout(10):
            await relay.wait_counters("a_to_b", lambda c: c.dropped_by_loss >= 20)
        assert linked.b.pending() == []
        relay.set_impairment("a_to_b", Impairment(delay_ms=100))
        for _ in range(5):
            (sent,) = struct.unpack("!d", (await linked.b.recv())[14:22])
            assert time.monotonic() - sent >= 0.100
        collector = Collector(linked.b)
        relay.set_impairment("a_to_b", Impairment())
        before = relay.counters("a_to_b").forwarded
        async with asyncio.timeout(10):  # once the delayed frames are out, frames pass at once
            await relay.wait_counters("a_to_b", lambda c: c.forwarded >= before + 50)
        await collector.close()
    finally:
        stop.set()
        await flow
    assert relay.counters("a_to_b").dropped_by_loss >= 20


# --- live capture stream ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_live_subscriber_gets_the_header_then_records(linked: Linked) -> None:
    async with linked.relay.subscribe_capture() as sub:
        frames = [frame(MAC_A, MAC_B, b"live%d" % i) for i in range(3)]
        for data in frames:
            assert linked.a.send(data)
            await linked.b.recv()
        data = b""
        async with asyncio.timeout(10):
            async for chunk in sub:
                data += chunk
                if len(parse_pcap(data).records) == 3:
                    break
    assert data.startswith(global_header())
    assert [rec for _, rec in parse_pcap(data).records] == frames
    assert not linked.relay._stream.active  # closed by leaving the block


@pytest.mark.asyncio
async def test_a_slow_subscriber_is_dropped_without_blocking_the_link(lab: Path) -> None:
    ea, eb = Endpoint(lab / "A", 1), Endpoint(lab / "B", 1)
    a, b = FakeNic(ea), FakeNic(eb)
    relay = Relay(lab / "link", ea, eb, stream_buffer=4096)
    await relay.start()
    try:
        connect_via(ea, relay.a_sock, eb, relay.b_sock)
        slow, fast = relay.subscribe_capture(), relay.subscribe_capture()
        got = b""

        async def follow() -> None:
            nonlocal got
            async for chunk in fast:
                got += chunk

        follower = asyncio.create_task(follow())
        frames = [frame(MAC_A, MAC_B, bytes([i]) * 186) for i in range(100)]
        assert await transfer(a, b, frames) == frames  # never waited for the slow one
        assert slow.dropped and not fast.dropped
        async with asyncio.timeout(5):
            assert [chunk async for chunk in slow] == []
    finally:
        await relay.stop()  # ends the fast subscription too
        a.close()
        b.close()
    async with asyncio.timeout(5):
        await follower
    assert [rec for _, rec in parse_pcap(got).records] == frames


# --- values and pieces ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"delay_ms": -1}, "delay_ms must be 0 to 60000"),
        ({"loss_pct": 100.5}, "loss_pct must be 0 to 100"),
        ({"corrupt_pct": math.nan}, "corrupt_pct must be 0 to 100"),
        ({"jitter_ms": True}, "jitter_ms must be a number"),
        ({"rate_kbps": "fast"}, "rate_kbps must be a number"),
        ({"rate_kbps": 1.5}, "rate_kbps must be whole"),
    ],
)
def test_impairment_values_are_checked(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        Impairment(**fields)  # type: ignore[arg-type]


def test_impairment_defaults_mean_none_and_directions_are_named(lab: Path) -> None:
    assert Impairment().is_none and not Impairment().shapes_time
    assert Impairment(rate_kbps=1000.0).rate_kbps == 1000  # type: ignore[arg-type]
    relay = Relay(lab / "link", Endpoint(lab / "A", 1), Endpoint(lab / "B", 1))
    with pytest.raises(InvalidRequest, match="a_to_b, b_to_a"):
        relay.set_impairment("up", Impairment())  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="at least one frame"):
        Relay(lab / "link", Endpoint(lab / "A", 1), Endpoint(lab / "B", 1), queue_limit=0)


def test_token_bucket_paces_by_bytes() -> None:
    bucket = TokenBucket(8, now=0.0)  # 8 kbit/s = 1000 bytes/s
    assert bucket.wait(0.0) == 0.0
    bucket.take(500, 0.0)
    assert bucket.wait(0.0) == pytest.approx(0.5)
    assert bucket.wait(0.5) == 0.0
    bucket.set_rate(0, 0.5)
    assert bucket.wait(0.5) == 0.0  # unlimited


def test_lane_decisions_repeat_with_a_seed() -> None:
    import random

    def run() -> list[bytes | None]:
        lane = Lane(random.Random("seed"))
        lane.set(Impairment(loss_pct=50, corrupt_pct=50), 0.0)
        return [lane.admit(bytes(40), 0.0) for _ in range(50)]

    first = run()
    assert first == run() and None in first and bytes(40) in first


def test_pcap_file_refuses_to_append_to_something_else(lab: Path) -> None:
    other = lab / "notes.txt"
    other.write_text("not a capture, and long enough to have a header\n")
    with pytest.raises(InvalidRequest, match="not an Ethernet pcap file"):
        PcapFile(other)
    with PcapFile(lab / "x.pcap") as pcap:
        pcap.write(b"f" * 20, 1_700_000_000_123_456_789)
    (ts, data) = parse_pcap((lab / "x.pcap").read_bytes()).records[0]
    assert data == b"f" * 20 and ts == pytest.approx(1_700_000_000.123456)


def test_socket_errors_are_the_ones_qemu_sees(lab: Path) -> None:
    """The kernel behaviour the wiring relies on: sendto resolves the symlink on every frame."""
    ea, eb = Endpoint(lab / "A", 1), Endpoint(lab / "B", 1)
    a = FakeNic(ea)
    try:
        os.symlink(eb.sock, ea.peer)  # a cable to a node that is not running
        with pytest.raises(OSError) as info:
            a.sock.sendto(b"x", str(ea.peer))
        assert info.value.errno == errno.ENOENT
        b = FakeNic(eb)  # B starts: the same symlink now leads somewhere
        try:
            a.sock.sendto(b"x", str(ea.peer))
            assert b.pending() == [b"x"]
        finally:
            b.close()
        with pytest.raises(OSError) as info:  # B stopped, its socket file remains
            a.sock.sendto(b"x", str(ea.peer))
        assert info.value.errno == errno.ECONNREFUSED
    finally:
        a.close()


# --- UDP ends: a node on a libvirt host, as its tunnel talks -----------------------------------


class FakeTunnel:
    """A NIC the way QEMU's ``-netdev socket,udp=PEER:P,localaddr=MINE:L`` makes one: bound at
    127.0.0.1:L, sending every frame to PEER:P (the relay's port), taking frames from anyone."""

    def __init__(self, relay_port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.relay_port = relay_port

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, ("127.0.0.1", self.relay_port))

    async def recv(self, timeout: float = 10.0) -> bytes:
        async with asyncio.timeout(timeout):
            return await asyncio.get_running_loop().sock_recv(self.sock, 70000)

    def close(self) -> None:
        self.sock.close()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def udp_end(relay_port: int, tunnel: FakeTunnel) -> UdpEndpoint:
    return UdpEndpoint("127.0.0.1", relay_port, "127.0.0.1", tunnel.port)


@pytest.mark.asyncio
async def test_a_local_nic_and_a_udp_tunnel_talk_through_the_relay_and_are_captured(
    lab: Path,
) -> None:
    ea = Endpoint(lab / "A", 1)
    a, port = FakeNic(ea), free_udp_port()
    t = FakeTunnel(port)
    relay = Relay(lab / "link", ea, udp_end(port, t), seed=3)
    await relay.start()
    try:
        plug(ea, relay.a_sock)
        assert peer_target(ea) == relay.a_sock and not relay.b_sock.exists()
        relay.start_capture(lab / "c.pcap")
        assert a.send(frame(MAC_A, MAC_B, b"to the host"))
        assert await t.recv() == frame(MAC_A, MAC_B, b"to the host")
        t.send(frame(MAC_B, MAC_A, b"from the host"))
        assert await a.recv() == frame(MAC_B, MAC_A, b"from the host")
        relay.set_impairment("b_to_a", Impairment(delay_ms=150))
        sent = time.monotonic()
        t.send(frame(MAC_B, MAC_A, b"late"))
        assert await a.recv() == frame(MAC_B, MAC_A, b"late")
        assert time.monotonic() - sent >= 0.15
        relay.stop_capture()
        records = [rec for _, rec in parse_pcap((lab / "c.pcap").read_bytes()).records]
        assert records == [
            frame(MAC_A, MAC_B, b"to the host"),
            frame(MAC_B, MAC_A, b"from the host"),
            frame(MAC_B, MAC_A, b"late"),
        ]
        assert relay.counters("a_to_b").forwarded == 1
        assert relay.counters("b_to_a").forwarded == 2
        unplug(ea, relay.a_sock)
        assert peer_target(ea) is None
    finally:
        await relay.stop()
        a.close()
        t.close()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", port))  # the relay let its port go


@pytest.mark.asyncio
async def test_two_udp_ends_relay_impair_and_ignore_strangers(lab: Path) -> None:
    """A link between two nodes on libvirt hosts, through the server: both ends UDP."""
    pa, pb = free_udp_port(), free_udp_port()
    ta, tb = FakeTunnel(pa), FakeTunnel(pb)
    relay = Relay(lab / "link", udp_end(pa, ta), udp_end(pb, tb), seed=5)
    await relay.start()
    stranger = FakeTunnel(pa)
    try:
        ta.send(b"one" + bytes(60))
        assert (await tb.recv()).startswith(b"one")
        tb.send(b"two" + bytes(60))
        assert (await ta.recv()).startswith(b"two")
        stranger.send(b"spoof" + bytes(60))  # not ta's address: the kernel drops it
        relay.set_impairment("a_to_b", Impairment(loss_pct=100))
        for _ in range(3):
            ta.send(bytes(60))
        async with asyncio.timeout(10):
            c = await relay.wait_counters("a_to_b", lambda c: c.dropped_by_loss == 3)
        assert (c.frames, c.forwarded) == (4, 1), "the stranger's datagram never counted"
        tb.send(b"three" + bytes(60))
        assert (await ta.recv()).startswith(b"three"), "the other way is not impaired"
    finally:
        await relay.stop()
        for t in (ta, tb, stranger):
            t.close()


@pytest.mark.asyncio
async def test_a_udp_end_whose_node_is_not_running_costs_frames_not_the_relay(
    lab: Path,
) -> None:
    """ICMP port unreachable comes back as ECONNREFUSED on the relay's socket: counted as a
    frame not delivered, and the relay goes on once the node listens."""
    ea = Endpoint(lab / "A", 1)
    a, port = FakeNic(ea), free_udp_port()
    t = FakeTunnel(port)
    gone_port = t.port
    t.close()  # the node on the host is not running: nothing listens on its port
    relay = Relay(lab / "link", ea, UdpEndpoint("127.0.0.1", port, "127.0.0.1", gone_port))
    await relay.start()
    try:
        plug(ea, relay.a_sock)
        for _ in range(4):
            assert a.send(bytes(60))
        async with asyncio.timeout(10):
            c = await relay.wait_counters("a_to_b", lambda c: c.frames == 4)
        assert c.dropped_send >= 1 and c.forwarded + c.dropped_send == 4, c
        back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        back.bind(("127.0.0.1", gone_port))  # the node starts again, on its same port
        try:
            back.sendto(b"up" + bytes(60), ("127.0.0.1", port))
            assert (await a.recv()).startswith(b"up"), "the receiving side survived"
            for _ in range(2):  # a refusal may still be pending from before
                assert a.send(b"hi" + bytes(60))
            async with asyncio.timeout(10):
                got = await asyncio.get_running_loop().sock_recv(back, 70000)
            assert got.startswith(b"hi")
        finally:
            back.close()
    finally:
        await relay.stop()
        a.close()


@pytest.mark.asyncio
async def test_a_udp_port_in_use_is_refused_and_nothing_stays_bound(lab: Path) -> None:
    ea = Endpoint(lab / "A", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        relay = Relay(lab / "link", ea, UdpEndpoint("127.0.0.1", port, "127.0.0.1", 9))
        with pytest.raises(Conflict, match=f"UDP port {port} on 127.0.0.1 is taken"):
            await relay.start()
    assert not relay.a_sock.exists(), "the unix end it had bound is gone again"
    with pytest.raises(InvalidRequest, match="not of one IP version"):
        await Relay(lab / "l2", UdpEndpoint("::1", 0, "127.0.0.1", 9), ea).start()
    with pytest.raises(Conflict, match="VIRTLAB_RELAY_ADDRESS"):
        await Relay(lab / "l3", UdpEndpoint("192.0.2.1", 0, "192.0.2.2", 9), ea).start()
