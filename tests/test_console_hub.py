"""SerialHub against a fake QEMU serial socket server on a real unix socket."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.fake_peers import FakeSerialPeer, short_dir, stale_socket
from virtlab.consoles import ConsoleUnavailable, HubState, SerialHub, Subscription
from virtlab.consoles.hub import NOTICE_EXITED, NOTICE_SLOW, NOTICE_STOPPED, NOTICE_UNAVAILABLE

BOOT_LOG = b"SeaBIOS\r\nLinux version 6.1\r\nvirtlab-guest login ok\r\n"


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_dir() as path:
        yield path


async def collect(sub: Subscription, until: bytes, timeout: float = 5.0) -> bytes:
    data = b""
    async with asyncio.timeout(timeout):
        async for chunk in sub:
            data += chunk
            if until in data:
                return data
    raise AssertionError(f"subscription ended before {until!r}: {data!r}")


async def drain(sub: Subscription, timeout: float = 5.0) -> bytes:
    """Everything until the subscription ends."""
    async with asyncio.timeout(timeout):
        return b"".join([chunk async for chunk in sub])


@pytest.mark.asyncio
async def test_late_subscriber_gets_scrollback_then_live(workdir: Path) -> None:
    async with FakeSerialPeer(workdir / "serial.sock", boot_log=BOOT_LOG) as qemu:
        hub = SerialHub(qemu.path)
        await hub.start()
        early = hub.subscribe()
        assert await collect(early, b"login ok\r\n") == BOOT_LOG
        late = hub.subscribe()  # joins after the boot log went by
        await qemu.send(b"live line\r\n")
        assert await collect(late, b"live line\r\n") == BOOT_LOG + b"live line\r\n"
        assert await collect(early, b"live line\r\n") == b"live line\r\n"
        await hub.stop()
        assert hub.state is HubState.CLOSED
        assert await drain(late) == NOTICE_STOPPED


@pytest.mark.asyncio
async def test_hub_takes_over_a_connection_made_before_the_peer_accepted(workdir: Path) -> None:
    """As the QEMU driver does: listen, connect (queued by the kernel), let the peer accept
    and write its first bytes, and only then hand the connection to a hub: nothing is lost.
    The path is no longer needed: the hub does not connect by it."""
    path = workdir / "serial.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(path))  # before anybody accepts
    client.setblocking(False)
    peer, _ = listener.accept()
    listener.close()
    path.unlink()
    try:
        peer.sendall(BOOT_LOG)  # the guest's first bytes, before any hub exists
        hub = SerialHub(path)
        await hub.start(sock=client)
        assert await collect(hub.subscribe(), b"login ok\r\n") == BOOT_LOG
        await hub.write(b"ls\r")
        peer.settimeout(5)
        assert peer.recv(16) == b"ls\r"
        peer.close()  # QEMU exits
        await asyncio.wait_for(hub.closed.wait(), 5)
        assert hub.close_reason == "exited"
    finally:
        peer.close()


@pytest.mark.asyncio
async def test_two_subscribers_see_the_same_bytes(workdir: Path) -> None:
    async with FakeSerialPeer(workdir / "serial.sock") as qemu, SerialHub(qemu.path) as hub:
        a, b = hub.subscribe(), hub.subscribe()
        payload = bytes(range(256)) * 64 + b"END"
        await qemu.send(payload)
        assert await collect(a, b"END") == payload
        assert await collect(b, b"END") == payload


@pytest.mark.asyncio
async def test_writes_from_two_clients_reach_the_peer(workdir: Path) -> None:
    async with FakeSerialPeer(workdir / "serial.sock") as qemu, SerialHub(qemu.path) as hub:
        watcher = hub.subscribe()
        await asyncio.gather(hub.write(b"from-a\r"), hub.write(b"from-b\r"))
        received = await qemu.wait_received(b"from-b\r")
        assert sorted(received.split(b"\r")[:2]) == [b"from-a", b"from-b"]  # not interleaved
        echoed = await collect(watcher, b"from-b\r")  # the fake echoes, like a tty
        assert b"from-a\r" in echoed


@pytest.mark.asyncio
async def test_slow_subscriber_is_dropped_and_does_not_block_a_fast_one(workdir: Path) -> None:
    path = workdir / "serial.sock"
    async with FakeSerialPeer(path, echo=False) as qemu:
        hub = SerialHub(path, scrollback_bytes=16 * 1024, client_queue_bytes=512 * 1024)
        await hub.start()
        slow = hub.subscribe()  # never reads until the end
        fast = hub.subscribe()
        total = 4 << 20
        block = os.urandom(64 * 1024)
        got = 0

        async def read_fast() -> None:
            nonlocal got
            async for chunk in fast:
                got += len(chunk)
                if got >= total:
                    return

        reading = asyncio.create_task(read_fast())
        for _ in range(total // len(block)):
            await qemu.send(block)
        await asyncio.wait_for(reading, 10)
        assert got == total
        assert slow.end_reason == "slow"
        assert await drain(slow) == NOTICE_SLOW
        assert fast.end_reason is None
        assert hub.subscriber_count == 1
        await hub.stop()


@pytest.mark.asyncio
async def test_hub_connects_when_the_socket_appears(workdir: Path) -> None:
    path = workdir / "serial.sock"
    hub = SerialHub(path)
    starting = asyncio.create_task(hub.start(timeout=10))
    await asyncio.sleep(0)  # let it try once and start waiting: the socket is not there yet
    assert hub.state is HubState.CONNECTING
    async with FakeSerialPeer(path, boot_log=BOOT_LOG) as qemu:
        await asyncio.wait_for(starting, 5)
        assert hub.state is HubState.OPEN
        await asyncio.wait_for(qemu.connected.wait(), 5)
        assert await collect(hub.subscribe(), b"login ok") == BOOT_LOG
        await hub.stop()


@pytest.mark.asyncio
async def test_hub_waits_past_a_stale_socket(workdir: Path) -> None:
    path = workdir / "serial.sock"
    stale_socket(path)  # a dead QEMU's socket: connect is refused until a new one replaces it
    hub = SerialHub(path)
    starting = asyncio.create_task(hub.start(timeout=10))
    await asyncio.sleep(0)
    assert hub.state is HubState.CONNECTING
    async with FakeSerialPeer(path):  # unlinks and binds again, as QEMU does
        await asyncio.wait_for(starting, 5)
        assert hub.state is HubState.OPEN
        await hub.stop()


@pytest.mark.asyncio
async def test_start_gives_up_after_its_timeout(workdir: Path) -> None:
    hub = SerialHub(workdir / "serial.sock")
    early = hub.subscribe()
    with pytest.raises(ConsoleUnavailable, match=r"did not accept a connection within 0\.2 s"):
        await hub.start(timeout=0.2)
    assert hub.closed.is_set()
    assert await drain(early) == NOTICE_UNAVAILABLE
    with pytest.raises(ConsoleUnavailable):
        await hub.write(b"x")


@pytest.mark.asyncio
async def test_stop_while_waiting_for_the_socket(workdir: Path) -> None:
    hub = SerialHub(workdir / "serial.sock")
    starting = asyncio.create_task(hub.start(timeout=30))
    await asyncio.sleep(0)
    assert hub.state is HubState.CONNECTING
    await hub.stop()
    with pytest.raises(ConsoleUnavailable, match="stopped while connecting"):
        await asyncio.wait_for(starting, 5)
    assert hub.close_reason == "stopped"


@pytest.mark.asyncio
async def test_peer_closing_ends_subscriptions(workdir: Path) -> None:
    qemu = await FakeSerialPeer(workdir / "serial.sock", boot_log=BOOT_LOG).start()
    hub = SerialHub(qemu.path)
    await hub.start()
    subs = [hub.subscribe(), hub.subscribe()]
    await collect(subs[0], b"login ok")
    await qemu.close()  # QEMU exits
    await asyncio.wait_for(hub.closed.wait(), 5)
    assert hub.close_reason == "exited"
    assert (await drain(subs[0])).endswith(NOTICE_EXITED)
    assert await drain(subs[1]) == BOOT_LOG + NOTICE_EXITED
    late = hub.subscribe()  # after the end: the scrollback, then the end
    assert await drain(late) == BOOT_LOG
    with pytest.raises(ConsoleUnavailable, match="closed"):
        await hub.write(b"x")
    await hub.stop()


@pytest.mark.asyncio
async def test_scrollback_is_trimmed_on_a_line_start(workdir: Path) -> None:
    async with FakeSerialPeer(workdir / "serial.sock") as qemu:
        hub = SerialHub(qemu.path, scrollback_bytes=1000)
        await hub.start()
        lines = b"".join(b"line %04d\r\n" % i for i in range(300))
        watcher = hub.subscribe()
        await qemu.send(lines)
        await collect(watcher, b"line 0299\r\n")
        assert len(hub.scrollback) <= 1000
        assert hub.scrollback.startswith(b"line ")
        assert lines.endswith(hub.scrollback)
        await hub.stop()


@pytest.mark.asyncio
async def test_persisted_scrollback_survives_a_new_hub(workdir: Path) -> None:
    path, log = workdir / "serial.sock", workdir / "serial.log"
    async with FakeSerialPeer(path, boot_log=BOOT_LOG, echo=False) as qemu:
        first = SerialHub(path, scrollback_bytes=4096, log_path=log)
        await first.start()
        await collect(first.subscribe(), b"login ok")
        for i in range(600):  # past twice the scrollback: the file is rewritten, not grown
            await qemu.send(b"output line %03d\r\n" % i)
        await collect(first.subscribe(), b"output line 599\r\n")
        await first.stop()  # the server restarts; QEMU goes on
    assert log.stat().st_mode & 0o777 == 0o600
    assert log.stat().st_size <= 2 * 4096
    async with FakeSerialPeer(path, echo=False) as qemu:
        second = SerialHub(path, scrollback_bytes=4096, log_path=log)
        await second.start()
        late = second.subscribe()
        await qemu.send(b"after restart\r\n")
        seen = await collect(late, b"after restart\r\n")
        assert seen.startswith(b"output line ")
        assert b"output line 599\r\nafter restart\r\n" in seen
        assert len(seen) <= 4096 + len(b"after restart\r\n")
        await second.stop()
        assert late.ended
    third = SerialHub(path, log_path=log)  # a fresh hub before connecting has it too
    with pytest.raises(ConsoleUnavailable):
        await third.start(timeout=0.05)
    assert third.scrollback.endswith(b"after restart\r\n")


@pytest.mark.asyncio
async def test_subscription_close_and_context(workdir: Path) -> None:
    qemu = FakeSerialPeer(workdir / "serial.sock", boot_log=BOOT_LOG)
    async with qemu, SerialHub(qemu.path) as hub:
        with hub.subscribe() as sub:
            await collect(sub, b"login ok")
            assert hub.subscriber_count == 1
        assert sub.end_reason == "unsubscribed"
        assert hub.subscriber_count == 0
        assert await drain(sub) == b""
        with pytest.raises(RuntimeError, match="already started"):
            await hub.start()
