"""The two sides of a relay: where a node's frames arrive, and how frames reach that node.

A relay (:mod:`virtlab.links.relay`) forwards frames between two ends and does not care what
they are made of; each end is one of:

- :class:`UnixEnd`, a NIC of a node on the server's own host: the relay binds a unix datagram
  socket (``LINK/a.sock``) that the NIC's ``nicN.peer`` symlink points at, and sends to the
  NIC's own ``nicN.sock`` through a socket connected to it (so a full receiver makes the relay
  wait instead of dropping, and a receiver that is not running costs the frame);
- :class:`UdpEnd`, a NIC of a node on a libvirt host (a UDP tunnel: ``-netdev
  socket,udp=PEER:P,localaddr=MINE:L``): the relay binds ``UdpEndpoint.host:port`` on the
  server, the node's tunnel sends there, and the relay sends from that same socket to the
  node's ``peer_host:peer_port``. The socket is connected to the node's address, so the kernel
  drops datagrams from anywhere else. A node that is not running answers with ICMP port
  unreachable: the next send or receive on the socket fails with ``ECONNREFUSED``, which costs
  at most that frame.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from virtlab.errors import Conflict, InvalidRequest
from virtlab.links.wiring import Endpoint

__all__ = ["GONE", "End", "UdpEnd", "UdpEndpoint", "UnixEnd", "make_end"]

log = logging.getLogger("virtlab.links")

GONE = (errno.ENOENT, errno.ECONNREFUSED)  # the receiver is not running: expected, not logged
_MAX_SUN_PATH = 107


@dataclass(frozen=True)
class UdpEndpoint:
    """A NIC on a libvirt host as the relay sees it: the relay listens on ``host:port`` (the
    server's address and port the node's tunnel sends to) and sends to ``peer_host:peer_port``
    (the node's own tunnel address and port on its host)."""

    host: str
    port: int
    peer_host: str
    peer_port: int

    def __str__(self) -> str:
        return f"udp {self.host}:{self.port} <-> {self.peer_host}:{self.peer_port}"


class End:
    """One side of a relay. ``rx`` receives what the side's node sends; :meth:`sender` gives a
    socket that reaches the node (or ``None`` while it cannot be reached)."""

    rx: socket.socket | None = None

    def open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def sender(self) -> socket.socket | None:
        raise NotImplementedError

    def lost(self, exc: OSError) -> None:
        """A send to the node failed with ``exc``: the frame is gone; recover for the next."""
        raise NotImplementedError


class UnixEnd(End):
    def __init__(self, endpoint: Endpoint, listen: Path) -> None:
        self.endpoint = endpoint
        self.listen = listen  # the relay's socket: the NIC's nicN.peer points here
        self.tx: socket.socket | None = None  # connected to the NIC's nicN.sock, on demand

    def __str__(self) -> str:
        return str(self.endpoint)

    def open(self) -> None:
        self.rx = _bind(self.listen)

    def close(self) -> None:
        for sock in (self.rx, self.tx):
            if sock is not None:
                sock.close()
        if self.rx is not None:
            self.listen.unlink(missing_ok=True)
        self.rx = self.tx = None

    def sender(self) -> socket.socket | None:
        if self.tx is not None:
            return self.tx
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        try:
            sock.connect(str(self.endpoint.sock))
        except OSError as exc:
            sock.close()
            if exc.errno not in GONE:
                log.debug("relay: cannot reach %s: %s", self.endpoint.sock, exc)
            return None
        self.tx = sock
        return sock

    def lost(self, exc: OSError) -> None:
        if self.tx is not None:  # the NIC's socket may come back as a new one: reconnect
            self.tx.close()
            self.tx = None


class UdpEnd(End):
    def __init__(self, where: UdpEndpoint) -> None:
        self.where = where

    def __str__(self) -> str:
        return str(self.where)

    def open(self) -> None:
        w = self.where
        family = _family(w.host)
        if _family(w.peer_host) != family:
            raise InvalidRequest(f"{w}: the two addresses are not of one IP version")
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        try:
            sock.bind((w.host, w.port))
            sock.connect((w.peer_host, w.peer_port))  # only the node's datagrams come in
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise Conflict(
                    f"UDP port {w.port} on {w.host} is taken by another program; free it, or "
                    "remove this link and add it again (it gets another port)"
                ) from exc
            if exc.errno == errno.EADDRNOTAVAIL:
                raise Conflict(
                    f"{w.host} is not an address of this server, so the relay cannot listen "
                    "there; set VIRTLAB_RELAY_ADDRESS to one of its addresses"
                ) from exc
            raise
        self.rx = sock

    def close(self) -> None:
        if self.rx is not None:
            self.rx.close()
        self.rx = None

    def sender(self) -> socket.socket | None:
        return self.rx

    def lost(self, exc: OSError) -> None:
        pass  # the one socket stays: the node may answer again


def make_end(side: Endpoint | UdpEndpoint, listen: Path) -> End:
    """The end for ``side``: a local NIC (``listen`` is the relay's socket for it) or UDP."""
    if isinstance(side, Endpoint):
        return UnixEnd(side, listen)
    if isinstance(side, UdpEndpoint):
        return UdpEnd(side)
    raise InvalidRequest(f"a relay end is a local NIC or a UDP endpoint, not {side!r}")


def _family(host: str) -> socket.AddressFamily:
    try:
        version = ipaddress.ip_address(host).version
    except ValueError as exc:
        raise InvalidRequest(f"{host!r} is not an IP address") from exc
    return socket.AF_INET6 if version == 6 else socket.AF_INET


def _bind(path: Path) -> socket.socket:
    """A non-blocking datagram socket bound at ``path``; a stale socket file is replaced."""
    if len(str(path).encode()) > _MAX_SUN_PATH:
        raise InvalidRequest(f"the relay socket path {path} is longer than {_MAX_SUN_PATH} bytes")
    if path.is_symlink() or (path.exists() and not stat.S_ISSOCK(path.stat().st_mode)):
        raise Conflict(f"{path} is in the way of a relay socket and is not one; remove it")
    if path.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            probe.connect(str(path))
        except OSError:  # nobody bound it (a relay that died): stale
            path.unlink()
        else:
            raise Conflict(f"another relay is bound at {path}; stop it first")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    try:
        sock.bind(str(path))
    except BaseException:
        sock.close()
        raise
    return sock
