"""Cables as symlinks: where each NIC's frames go, changed while both QEMUs run.

Every NIC is a ``dgram`` netdev on unix datagram sockets in its node's directory (see
:func:`virtlab.nodes.qemu.argv.unplugged_nic_paths`): QEMU binds ``nicN.sock`` and sends every
frame with ``sendto(…, "NODE/nicN.peer")``. QEMU never ``connect()``\\ s the socket, so the
kernel resolves that path on every frame, and ``nicN.peer`` being a symlink decides, frame by
frame, where the frames go:

- a **direct** link A.eth1 ↔ B.eth1 is ``A/nic1.peer → B/nic1.sock`` and
  ``B/nic1.peer → A/nic1.sock``: kernel to kernel, no relay process, no root, no bridge;
- a **relayed** link (captured or impaired) is ``A/nic1.peer → LINK/a.sock`` and
  ``B/nic1.peer → LINK/b.sock``, sockets a :class:`virtlab.links.relay.Relay` binds;
- an **unplugged** NIC has no ``nicN.peer``: its frames fail with ``ENOENT`` inside QEMU and are
  dropped (QEMU prints nothing).

Each symlink is replaced atomically (``nicN.peer.tmp`` then :func:`os.replace`), so a frame goes
either the old way or the new way. Switching a link between direct and relayed swaps the two
symlinks one after the other: for a moment one direction is direct and the other relayed, which
loses nothing. The two endpoints are checked before either is touched; callers serialise changes
to the same endpoints (the link service holds a lock), this module does not.

An interface carries one link at most, and the symlink's target says which: a target that is
neither the other endpoint's socket nor one of the relay sockets the caller names belongs to
another link, and the change is refused with :class:`~virtlab.errors.Conflict`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from virtlab.errors import Conflict, InvalidRequest
from virtlab.nodes.qemu.argv import unplugged_nic_paths
from virtlab.nodes.spec import RunPaths

__all__ = [
    "Endpoint",
    "connect_direct",
    "connect_via",
    "disconnect",
    "peer_target",
    "plug",
    "unplug",
]


@dataclass(frozen=True)
class Endpoint:
    """NIC ``index`` (``eth<index>``) of the node whose run directory is ``node_dir``."""

    node_dir: Path
    index: int

    def __post_init__(self) -> None:
        if isinstance(self.index, bool) or not isinstance(self.index, int) or self.index < 0:
            raise InvalidRequest(f"a NIC index is a whole number from 0, not {self.index!r}")
        object.__setattr__(self, "node_dir", Path(os.path.abspath(self.node_dir)))

    @property
    def sock(self) -> Path:
        """The socket QEMU binds: frames for this NIC are sent here."""
        return unplugged_nic_paths(RunPaths(self.node_dir), self.index)[0]

    @property
    def peer(self) -> Path:
        """The path QEMU sends this NIC's frames to: the symlink this module manages."""
        return unplugged_nic_paths(RunPaths(self.node_dir), self.index)[1]

    def __str__(self) -> str:
        return f"{self.node_dir.name}:eth{self.index}"


def peer_target(endpoint: Endpoint) -> Path | None:
    """Where ``endpoint``'s frames go now (its symlink's target), or ``None`` if unplugged.

    Raises :class:`Conflict` if ``nicN.peer`` exists but is not a symlink (something bound a
    socket there: not a cable this module made).
    """
    try:
        return Path(os.readlink(endpoint.peer))
    except FileNotFoundError:
        return None
    except OSError as exc:  # EINVAL: not a symlink
        raise Conflict(
            f"{endpoint}: {endpoint.peer} is not a link symlink ({exc.strerror}); "
            "remove it or stop whatever made it"
        ) from exc


def _check(endpoint: Endpoint, target: Path, allowed: Iterable[Path], link: str) -> bool:
    """Whether ``endpoint`` needs a change to point at ``target``; raise if another link has it."""
    current = peer_target(endpoint)
    if current == target:
        return False
    if current is None or current in set(allowed):
        return True
    raise Conflict(
        f"{endpoint} already carries another link (its frames go to {current}); "
        f"remove that link before adding {link}"
    )


def _point(endpoint: Endpoint, target: Path) -> None:
    """Make ``endpoint.peer`` a symlink to ``target``, atomically."""
    tmp = endpoint.peer.with_name(endpoint.peer.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    try:
        os.replace(tmp, endpoint.peer)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _abs(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _pair(a: Endpoint, b: Endpoint) -> None:
    if a == b:
        raise InvalidRequest(f"a link joins two different interfaces, not {a} to itself")


def connect_direct(
    a: Endpoint, b: Endpoint, *, relay_socks: tuple[Path, Path] | None = None
) -> None:
    """Wire ``a`` and ``b`` to each other's socket: frames go kernel to kernel.

    Idempotent. ``relay_socks`` (``a``'s and ``b``'s relay sockets) names the relay this link
    goes through now, when switching it from relayed to direct.
    """
    _pair(a, b)
    link = f"{a} <-> {b}"
    allowed = [_abs(p) for p in relay_socks] if relay_socks else []
    plan = [(a, b.sock), (b, a.sock)]
    changes = [(ep, target) for ep, target in plan if _check(ep, target, allowed, link)]
    for ep, target in changes:
        _point(ep, target)


def connect_via(a: Endpoint, a_relay_sock: Path, b: Endpoint, b_relay_sock: Path) -> None:
    """Wire ``a`` to ``a_relay_sock`` and ``b`` to ``b_relay_sock`` (a relay joins them).

    Idempotent; switches a direct link between ``a`` and ``b`` to the relay.
    """
    _pair(a, b)
    a_relay, b_relay = _abs(a_relay_sock), _abs(b_relay_sock)
    if a_relay == b_relay:
        raise InvalidRequest(f"the relay of {a} <-> {b} needs two sockets, not one: {a_relay}")
    link = f"{a} <-> {b} (through {a_relay.parent})"
    plan = [(a, a_relay, b.sock), (b, b_relay, a.sock)]
    changes = [(ep, target) for ep, target, direct in plan if _check(ep, target, [direct], link)]
    for ep, target in changes:
        _point(ep, target)


def disconnect(a: Endpoint, b: Endpoint, *, relay_socks: tuple[Path, Path] | None = None) -> None:
    """Unplug the link between ``a`` and ``b`` (direct, or through ``relay_socks``).

    Idempotent: an endpoint already unplugged is left alone. An endpoint wired to something else
    belongs to another link and is not touched: :class:`Conflict`.
    """
    _pair(a, b)
    link = f"{a} <-> {b}"
    relay = [_abs(p) for p in relay_socks] if relay_socks else []
    plan = [(a, b.sock), (b, a.sock)]
    unplug = []
    for ep, direct in plan:
        current = peer_target(ep)
        if current is None:
            continue
        if current != direct and current not in relay:
            raise Conflict(
                f"{ep} is not part of {link} (its frames go to {current}); nothing was removed"
            )
        unplug.append(ep)
    for ep in unplug:
        ep.peer.unlink(missing_ok=True)


def plug(endpoint: Endpoint, relay_sock: Path) -> None:
    """Wire ``endpoint`` alone to ``relay_sock``: its link's other end is not a local NIC (a
    node on a libvirt host, reached through the relay). Idempotent; an endpoint wired to
    anything else belongs to another link: :class:`Conflict`."""
    target = _abs(relay_sock)
    if _check(endpoint, target, [], f"{endpoint} <-> a relay in {target.parent}"):
        _point(endpoint, target)


def unplug(endpoint: Endpoint, relay_sock: Path) -> None:
    """Undo :func:`plug` (idempotent); an endpoint wired elsewhere is left alone: Conflict."""
    current = peer_target(endpoint)
    if current is None:
        return
    if current != _abs(relay_sock):
        raise Conflict(
            f"{endpoint} is not wired to {relay_sock} (its frames go to {current}); "
            "nothing was removed"
        )
    endpoint.peer.unlink(missing_ok=True)
