"""A host connection that retries while its host is frozen keeps no connection it gave up on.

A real libvirtd (``support/libvirt_hosts.py``) frozen with SIGSTOP accepts TCP connections but
answers nothing: each retry's open times out in a worker thread that cannot be stopped, and
completes when the daemon wakes. Those connections, and the one lost, must be let go of.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import pytest

pytest.importorskip(
    "libvirt", reason="libvirt-python is not installed: pip install -e '.[libvirt]'"
)

from support.fake_peers import short_dir
from support.libvirt_hosts import LibvirtHost, have_libvirtd
from virtlab.hosts.connection import HostConnection

NEEDS = "apt-get install libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients"
pytestmark = pytest.mark.skipif(not have_libvirtd(), reason=NEEDS)


def _connections(port: int) -> int:
    """The TCP connections this process holds open to ``port``."""
    pid, inodes = os.getpid(), set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            if int(f[2].split(":")[1], 16) == port and f[3] == "01" and f[9] in inodes:
                count += 1
    return count


class _Retries(logging.Handler):
    """Sets ``seen`` once the connection has logged ``wanted`` failed retries."""

    def __init__(self, wanted: int) -> None:
        super().__init__(logging.DEBUG)
        self.wanted, self.count, self.seen = wanted, 0, asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "still down" in record.getMessage():
            self.count += 1
            if self.count >= self.wanted:
                self.seen.set()


async def _freeze_and_wake(host: LibvirtHost) -> None:
    assert host.daemon is not None
    pid = host.daemon.pid  # libvirtd itself: unshare and sh exec it
    conn = HostConnection("r1", host.uri, open_timeout=1, retry_delays=(0.05, 0.2))
    await conn.open()
    assert _connections(host.port) == 1
    logger, retries = logging.getLogger("virtlab.hosts"), _Retries(3)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(retries)
    os.kill(pid, signal.SIGSTOP)
    try:
        conn.lost("frozen by the test")
        await asyncio.wait_for(retries.seen.wait(), 60)  # three opens given up on
    finally:
        os.kill(pid, signal.SIGCONT)
        logger.removeHandler(retries)
        logger.setLevel(level)
    await asyncio.wait_for(conn.up.wait(), 60)
    assert (await conn.info()).cpus >= 1
    await conn.close()
    assert _connections(host.port) == 0


def test_opens_given_up_on_are_closed_when_the_host_wakes() -> None:
    with short_dir("vhr-") as root, LibvirtHost.start(root / "r1") as host:
        asyncio.run(_freeze_and_wake(host))
