"""Each running node's consoles: its serial hub, telnet port and VNC port, opened and closed
with the node. Ports are allocated once, when the node is created, and kept.

When ``tickets_required`` (a console host beyond loopback), the ports are given the node's
tickets and :meth:`ConsoleManager.issue_ticket` hands them out."""

from __future__ import annotations

import contextlib
import logging
import socket
from dataclasses import dataclass
from typing import Literal

from virtlab.auth.throttle import LoginThrottle
from virtlab.auth.tickets import NodeTickets, TicketBook
from virtlab.catalog import NodeRecord
from virtlab.consoles import ConsoleUnavailable, SerialHub, TelnetServer, VncTcpProxy
from virtlab.errors import Conflict, InsufficientStorage
from virtlab.nodes.ports import PortRange
from virtlab.nodes.spec import NodeSpec
from virtlab.nodes.state import NodeState

__all__ = ["ConsoleManager", "ConsoleTicket", "NodeConsoles", "Ports"]

log = logging.getLogger("virtlab.consoles")


@dataclass(frozen=True)
class Ports:
    telnet: int | None
    vnc: int | None


@dataclass(frozen=True)
class ConsoleTicket:
    """Where a console port is, and the ticket it asks for (None: it asks for none)."""

    kind: Literal["telnet", "vnc"]
    host: str
    port: int
    required: bool
    ticket: str | None = None
    expires_in: float | None = None  # seconds


@dataclass
class NodeConsoles:
    spec: NodeSpec
    hub: SerialHub | None = None
    telnet: TelnetServer | None = None
    vnc: VncTcpProxy | None = None


class ConsoleManager:
    def __init__(
        self, *, host: str, telnet_ports: PortRange, vnc_ports: PortRange,
        vnc_tcp: bool = True, scrollback_bytes: int = 256 << 10,
        tickets_required: bool = False, ticket_seconds: float = 60.0,
        ticket_attempts: int = 5, ticket_lockout: float = 60.0,
    ) -> None:  # fmt: skip
        self.host = host
        self.tickets_required = tickets_required
        throttle = LoginThrottle(limit=ticket_attempts, window=600.0, lockout=ticket_lockout)
        self.tickets = TicketBook(ttl=ticket_seconds, throttle=throttle)
        self.telnet_ports = telnet_ports
        self.vnc_ports = vnc_ports
        self.vnc_tcp = vnc_tcp
        self.scrollback_bytes = scrollback_bytes
        self._open: dict[str, NodeConsoles] = {}

    # -- ports --------------------------------------------------------------------------------

    def allocate(self, in_use: set[int], serial: bool, vnc: bool) -> Ports:
        telnet = self._free(self.telnet_ports, in_use, "telnet") if serial else None
        taken = in_use | ({telnet} if telnet else set())
        vnc_port = self._free(self.vnc_ports, taken, "VNC") if vnc and self.vnc_tcp else None
        return Ports(telnet, vnc_port)

    def _free(self, ports: PortRange, in_use: set[int], what: str) -> int:
        for port in range(ports.start, ports.end + 1):
            if port not in in_use and _bindable(self.host, port):
                return port
        raise InsufficientStorage(
            f"no free {what} console port left in {ports.start}-{ports.end} on {self.host}; "
            "delete unused nodes or widen the range"
        )

    # -- consoles of running nodes ------------------------------------------------------------

    async def open(
        self, record: NodeRecord, spec: NodeSpec, serial: socket.socket | None = None
    ) -> NodeConsoles:
        """Open the node's consoles; ``serial``: its serial connection, made already by the
        driver (else the hub connects to ``spec.paths.serial``)."""
        await self.close(record.id)
        consoles = NodeConsoles(spec)
        self._open[record.id] = consoles
        gate = NodeTickets(self.tickets, record.id, record.name) if self.tickets_required else None
        try:
            if spec.serial:
                consoles.hub = SerialHub(
                    spec.paths.serial, scrollback_bytes=self.scrollback_bytes,
                    log_path=spec.paths.root / "serial.scrollback",
                )  # fmt: skip
                await consoles.hub.start(sock=serial)
                serial = None
                if record.telnet_port:
                    consoles.telnet = TelnetServer(
                        consoles.hub, self.host, record.telnet_port, tickets=gate
                    )
                    await consoles.telnet.start()
            if spec.vnc and record.vnc_port and self.vnc_tcp:
                consoles.vnc = VncTcpProxy(spec.paths.vnc, self.host, record.vnc_port, tickets=gate)
                await consoles.vnc.start()
        except (OSError, ConsoleUnavailable) as exc:
            log.warning("node %s: a console could not be opened: %s", record.name, exc)
        finally:
            if serial is not None:  # not taken over by a hub
                serial.close()
        return consoles

    def hub(self, record: NodeRecord) -> SerialHub:
        consoles = self._open.get(record.id)
        if consoles is None or consoles.hub is None:
            state = NodeState(record.state)
            raise Conflict(
                f"node {record.name} has no serial console now (it is {state.value}); start it"
                if state not in (NodeState.RUNNING, NodeState.SUSPENDED, NodeState.STARTING)
                else f"node {record.name} has no serial console (it was created without one)"
            )
        return consoles.hub

    def vnc_socket(self, record: NodeRecord):  # type: ignore[no-untyped-def]
        consoles = self._open.get(record.id)
        if consoles is None or not consoles.spec.vnc:
            raise Conflict(f"node {record.name} has no VNC console now (it is {record.state})")
        return consoles.spec.paths.vnc

    def issue_ticket(self, record: NodeRecord, kind: Literal["telnet", "vnc"]) -> ConsoleTicket:
        """A ticket for the node's telnet or VNC port (when its ports ask for one), and where
        the port is; :class:`Conflict` if that port is not open now."""
        consoles = self._open.get(record.id)
        if consoles is None:
            raise Conflict(
                f"node {record.name} is {record.state}: its console ports are open only while "
                f"it runs; start it (`virtlab node start {record.name}`)"
            )
        port = consoles.telnet if kind == "telnet" else consoles.vnc
        if port is None:
            why = (
                "it has no serial console, or its telnet port could not be opened (see the "
                "server's log)"
                if kind == "telnet"
                else "it has no display, VNC TCP ports are off (VIRTLAB_VNC_TCP), or its port "
                "could not be opened (see the server's log); the web UI's VNC works without one"
            )
            raise Conflict(f"node {record.name} has no {kind} console port: {why}")
        if not self.tickets_required:
            return ConsoleTicket(kind, self.host, port.port, required=False)
        ticket = self.tickets.issue(record.id, kind)
        return ConsoleTicket(
            kind, self.host, port.port, required=True, ticket=ticket.secret,
            expires_in=self.tickets.ttl,
        )  # fmt: skip

    async def close(self, node_id: str) -> None:
        consoles = self._open.pop(node_id, None)
        if consoles is None:
            return
        for part in (consoles.telnet, consoles.vnc, consoles.hub):
            if part is not None:
                with contextlib.suppress(Exception):
                    await part.stop()

    async def close_all(self) -> None:
        for node_id in list(self._open):
            await self.close(node_id)


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
