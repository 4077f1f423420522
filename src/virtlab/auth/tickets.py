"""Console tickets: short-lived, single-use passes to a node's telnet or VNC port.

A console port that listens beyond loopback lets a connection in only with a ticket the API
handed to a user allowed on that node. A telnet ticket is typed (or pasted) at the port's
prompt; a VNC ticket is the VNC password, which QEMU checks itself (VNC passwords are 8
characters at most, so VNC tickets are 8 characters from a 62-letter alphabet, and they die
after ``ttl`` seconds or one use, whichever comes first).
"""

from __future__ import annotations

import hmac
import secrets
import string
import threading
import time
from dataclasses import dataclass
from typing import Literal

__all__ = ["Ticket", "TicketBook"]

Kind = Literal["telnet", "vnc"]
_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class Ticket:
    node_id: str
    kind: Kind
    secret: str
    expires: float  # time.monotonic()


class TicketBook:
    """Tickets in memory: a server restart voids them all, which is what a ticket should do."""

    def __init__(self, ttl: float = 60.0, clock=time.monotonic) -> None:  # type: ignore[no-untyped-def]
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._tickets: dict[tuple[str, Kind], list[Ticket]] = {}

    def issue(self, node_id: str, kind: Kind) -> Ticket:
        length = 8 if kind == "vnc" else 24
        secret = "".join(secrets.choice(_ALPHABET) for _ in range(length))
        ticket = Ticket(node_id, kind, secret, self._clock() + self.ttl)
        with self._lock:
            self._prune()
            self._tickets.setdefault((node_id, kind), []).append(ticket)
        return ticket

    def redeem(self, node_id: str, kind: Kind, secret: str) -> bool:
        """True once for a live ticket of this node and kind; the ticket is used up."""
        with self._lock:
            self._prune()
            tickets = self._tickets.get((node_id, kind), [])
            for ticket in tickets:
                if hmac.compare_digest(ticket.secret.encode(), secret.encode()):
                    tickets.remove(ticket)
                    return True
        return False

    def _prune(self) -> None:
        now = self._clock()
        for key in list(self._tickets):
            live = [t for t in self._tickets[key] if t.expires > now]
            if live:
                self._tickets[key] = live
            else:
                del self._tickets[key]
