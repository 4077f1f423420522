"""Console tickets: short-lived, single-use passes to a node's telnet or VNC port.

A console port that listens beyond loopback lets a connection in only with a ticket the API
handed to a user allowed on that node. A telnet ticket is typed (or pasted) at the port's
prompt; a VNC ticket is the VNC password, which the node's VNC port checks in the RFB handshake
(VNC Authentication, :mod:`virtlab.consoles.rfb_auth`). VNC passwords are 8 characters at
most, so VNC tickets are 8 characters from a 62-letter alphabet; every ticket dies after
``ttl`` seconds or one use, whichever comes first.
"""

from __future__ import annotations

import hmac
import secrets
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from virtlab.auth.throttle import LoginThrottle

__all__ = ["NodeTickets", "Ticket", "TicketBook"]

Kind = Literal["telnet", "vnc"]
_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class Ticket:
    node_id: str
    kind: Kind
    secret: str
    expires: float  # time.monotonic()


class TicketBook:
    """Tickets in memory: a server restart voids them all, which is what a ticket should do.

    Wrong tickets are counted like failed logins (:class:`LoginThrottle`), per console port
    (node and kind) and client address: past the throttle's limit, that address is refused at
    that port for a while, even with a live ticket (which is then not used up).
    """

    def __init__(
        self, ttl: float = 60.0, clock=time.monotonic,  # type: ignore[no-untyped-def]
        throttle: LoginThrottle | None = None,
    ) -> None:  # fmt: skip
        self.ttl = ttl
        self._clock = clock
        self.throttle = throttle or LoginThrottle(limit=5, window=600.0, lockout=60.0, clock=clock)
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
        given = secret.encode()
        return self.redeem_if(node_id, kind, lambda s: hmac.compare_digest(s.encode(), given))

    def redeem_if(self, node_id: str, kind: Kind, matches: Callable[[str], bool]) -> bool:
        """Use up the first live ticket of this node and kind whose secret ``matches`` (for a
        proof of the secret rather than the secret itself, as VNC's challenge/response)."""
        with self._lock:
            self._prune()
            tickets = self._tickets.get((node_id, kind), [])
            for ticket in tickets:
                if matches(ticket.secret):
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


@dataclass(frozen=True)
class NodeTickets:
    """The tickets of one node, as its console ports check them."""

    book: TicketBook
    node_id: str
    node_name: str

    def redeem(self, kind: Kind, secret: str) -> bool:
        return self.book.redeem(self.node_id, kind, secret)

    def redeem_if(self, kind: Kind, matches: Callable[[str], bool]) -> bool:
        return self.book.redeem_if(self.node_id, kind, matches)

    def wait_for(self, kind: Kind, address: str) -> int:
        """Seconds until ``address`` may try a ticket at this port again (0: now)."""
        return self.book.throttle.wait_for(f"{self.node_id}/{kind}", address)

    def wrong(self, kind: Kind, address: str) -> int:
        """Count a wrong ticket from ``address``; the seconds it is now locked out (0: not)."""
        self.book.throttle.failed(f"{self.node_id}/{kind}", address)
        return self.wait_for(kind, address)

    def locked_out(self, kind: Kind, address: str, wait: int) -> str:
        """What a client refused for too many wrong tickets is told."""
        option = " --kind vnc" if kind == "vnc" else ""
        return (
            f"too many wrong tickets from {address or 'this address'} at the {kind} port of "
            f"node {self.node_name}; try again in {wait} s with a new ticket (`virtlab node "
            f"console-ticket {self.node_name}{option}`)"
        )

    def refusal(self, kind: Kind) -> str:
        """What a refused client is told."""
        option = " --kind vnc" if kind == "vnc" else ""
        return (
            f"ticket refused: ask for a new one with `virtlab node console-ticket "
            f"{self.node_name}{option}` (a ticket works once, for "
            f"{self.book.ttl:g} seconds)"
        )
