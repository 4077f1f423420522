"""The unix sockets QEMU serves QMP and the serial console on, made by virtlab, not by QEMU.

Before QEMU is spawned, the driver binds and listens on ``qmp.sock`` and ``serial.sock`` in the
node's directory, and connects one client to the serial socket at once: the kernel queues that
connection until somebody accepts it. QEMU inherits both listening sockets as descriptors
(:data:`QMP_FD`, :data:`SERIAL_FD`; ``-chardev socket,fd=N,server=on``, as libvirt passes its
pre-opened sockets) and never binds a path of its own. The serial chardev has ``wait=on``:
QEMU accepts a connection before it creates the machine, which is immediate since ours is
queued already. So the guest runs from QEMU's first instant (no ``-S``, no QMP ``cont``) and
its very first byte is in that connection's buffer, waiting for the console hub that takes it
over (:meth:`virtlab.nodes.qemu.driver.QemuDriver.console_socket`).

The sockets stay at their paths while QEMU runs: a restarted server's hub and monitor connect
to them by path, like any client (QEMU listens again after a client leaves).
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
from dataclasses import dataclass, field
from pathlib import Path

from virtlab.nodes.qemu.argv import QMP_FD, SERIAL_FD

__all__ = ["NodeSockets"]

_BACKLOG = 4
_HIGH_FD = 64  # copies above the targets, so placing one never overwrites another


@dataclass
class NodeSockets:
    """The listening sockets for one QEMU, and the serial connection already made to one."""

    qmp: socket.socket
    serial: socket.socket | None = None
    serial_client: socket.socket | None = None
    _copies: list[int] = field(default_factory=list, repr=False)

    @classmethod
    def bind(cls, qmp_path: Path, serial_path: Path | None) -> NodeSockets:
        """Listen on ``qmp_path`` (and ``serial_path``, which gets its client connected).
        Stale files at those paths are replaced."""
        made: list[socket.socket] = []
        try:
            qmp = _listen(qmp_path, made)
            if serial_path is None:
                return cls(qmp)
            serial = _listen(serial_path, made)
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            made.append(client)
            client.connect(str(serial_path))  # queued by the kernel: returns at once
            client.setblocking(False)
            return cls(qmp, serial, client)
        except BaseException:
            for sock in made:
                sock.close()
            raise

    def passed_fds(self) -> list[tuple[int, int]]:
        """(our descriptor, QEMU's number) pairs for :meth:`QemuProcess.launch`.

        Each source is a close-on-exec copy numbered above the targets, so the child's
        ``dup2`` onto 3 and 4 cannot clobber a source that happens to be 3 or 4."""
        pairs = [(self.qmp, QMP_FD)] + ([(self.serial, SERIAL_FD)] if self.serial else [])
        out = []
        for sock, target in pairs:
            copy = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
            self._copies.append(copy)
            out.append((copy, target))
        return out

    def release_listeners(self) -> None:
        """Close our copies of the listening sockets (QEMU holds its own): once QEMU exits,
        nobody listens and a client's connection fails instead of waiting."""
        for fd in self._copies:
            with contextlib.suppress(OSError):
                socket.close(fd)
        self._copies.clear()
        self.qmp.close()
        if self.serial is not None:
            self.serial.close()

    def take_serial(self) -> socket.socket | None:
        """The connected serial client, handed over once (then it is the caller's)."""
        client, self.serial_client = self.serial_client, None
        return client

    def close(self) -> None:
        self.release_listeners()
        client = self.take_serial()
        if client is not None:
            client.close()


def _listen(path: Path, made: list[socket.socket]) -> socket.socket:
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    made.append(sock)
    sock.bind(str(path))
    sock.listen(_BACKLOG)
    return sock
