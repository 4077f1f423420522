"""A telnet port per node for PuTTY, SecureCRT and ``telnet``, bridged to a :class:`SerialHub`.

Each connection gets the scrollback, then live output; what the user types goes to the guest.

Telnet spoken (RFC 854/855, with the option states of RFC 1143 kept simple):

* On connect the server sends ``IAC WILL ECHO``, ``IAC WILL SUPPRESS-GO-AHEAD``,
  ``IAC DO SUPPRESS-GO-AHEAD``: character mode, no local echo, so what the user sees is the
  guest's own echo. It also offers ``WILL BINARY`` and ``DO BINARY``, so 8-bit text (UTF-8)
  passes both ways (BSD/netkit ``telnet`` strips the 8th bit of input otherwise).
* Requests for those options are agreed to; requests for any other option are refused
  (``DO x`` → ``WONT x``, ``WILL x`` → ``DONT x``, NAWS and TTYPE included); replies that only
  acknowledge what was asked get no answer, so negotiation cannot loop.
* ``IAC IAC`` is a 0xFF data byte; subnegotiations ``SB … SE`` are skipped; ``IP`` (a telnet
  client's "interrupt") becomes Ctrl-C, ``EC`` DEL, ``EL`` Ctrl-U; other commands are ignored.
* Enter: clients send ``CR NUL`` or ``CR LF`` (PuTTY's "Telnet New Line"); the guest's serial
  tty expects a bare ``CR`` (``ICRNL`` turns it into a newline), so both become ``CR``. A lone
  ``LF`` passes unchanged.
* Output: 0xFF is sent as ``IAC IAC``; nothing else is changed.

Tickets: when the port is given a node's tickets (a console host beyond loopback, see
:mod:`virtlab.auth.tickets`), the greeting is followed by the prompt ``virtlab console ticket: ``;
the client has :data:`TICKET_TIMEOUT` seconds for one line of at most :data:`TICKET_MAX`
characters (not echoed, like a password). A live ticket of this node lets the connection on to
the console (scrollback first, as always); anything else gets one line saying so, and the
connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from virtlab.auth.tickets import NodeTickets
from virtlab.consoles.hub import ConsoleUnavailable, SerialHub, Subscription, first_completed
from virtlab.consoles.tcp import TcpConsolePort

__all__ = ["PROMPT", "TelnetCodec", "TelnetServer"]

log = logging.getLogger(__name__)

IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
IP, EC, EL, AYT = 244, 247, 248, 246
BINARY, ECHO, SGA = 0, 1, 3
_CR, _LF, _NUL = 13, 10, 0

_OURS = frozenset({ECHO, SGA, BINARY})  # options we perform on our side (answer to DO)
_THEIRS = frozenset({SGA, BINARY})  # options we let the client perform (answer to WILL)
_COMMAND_BYTES = {IP: b"\x03", EC: b"\x7f", EL: b"\x15"}
_NO, _YES, _WANT_YES = 0, 1, 2

PROMPT = b"virtlab console ticket: "
TICKET_TIMEOUT = 30.0  # seconds to type or paste a ticket
TICKET_MAX = 64  # characters of a ticket line (tickets have 24)
_BACKSPACES = frozenset({0x08, 0x7F})
_ABANDON = frozenset({0x03, 0x04})  # Ctrl-C, Ctrl-D

# (verb, option) pairs sent on connect, in this order.
GREETING = ((WILL, ECHO), (WILL, SGA), (DO, SGA), (WILL, BINARY), (DO, BINARY))


def escape(data: bytes) -> bytes:
    """Output for a telnet client: 0xFF doubled."""
    return data.replace(b"\xff", b"\xff\xff")


class TelnetCodec:
    """The telnet state of one connection: strips commands from input, answers negotiation.

    :meth:`greeting` gives the bytes to send first; :meth:`decode` takes any piece of input
    (sequences may be split anywhere) and returns ``(data for the guest, replies to send)``.
    """

    def __init__(self) -> None:
        self._state = "data"  # data, iac, option, sb, sb_iac
        self._verb = 0
        self._after_cr = False
        self._us: dict[int, int] = {}  # our side of each option
        self._him: dict[int, int] = {}  # the client's side

    def greeting(self) -> bytes:
        out = bytearray()
        for verb, option in GREETING:
            table = self._us if verb == WILL else self._him
            table[option] = _WANT_YES
            out += bytes((IAC, verb, option))
        return bytes(out)

    def decode(self, data: bytes) -> tuple[bytes, bytes]:
        if self._state == "data" and not self._after_cr and IAC not in data and _CR not in data:
            return data, b""  # the common case: plain keystrokes
        out, replies = bytearray(), bytearray()
        for byte in data:
            self._step(byte, out, replies)
        return bytes(out), bytes(replies)

    def _step(self, byte: int, out: bytearray, replies: bytearray) -> None:
        state = self._state
        if state == "data":
            if byte == IAC:
                self._state = "iac"
            else:
                self._data(byte, out)
        elif state == "iac":
            self._state = "data"
            if byte == IAC:
                self._data(IAC, out)
            elif byte in (WILL, WONT, DO, DONT):
                self._verb, self._state = byte, "option"
            elif byte == SB:
                self._state = "sb"
            elif byte == AYT:
                replies += b"\r\n[virtlab: yes]\r\n"
            elif byte in _COMMAND_BYTES:
                for b in _COMMAND_BYTES[byte]:
                    self._data(b, out)
        elif state == "option":
            self._state = "data"
            self._negotiate(self._verb, byte, replies)
        elif state == "sb":
            if byte == IAC:
                self._state = "sb_iac"
        elif state == "sb_iac":  # IAC SE ends it; IAC IAC is data inside it
            self._state = "data" if byte == SE else "sb"

    def _data(self, byte: int, out: bytearray) -> None:
        if self._after_cr:
            self._after_cr = False
            if byte in (_LF, _NUL):
                return
        out.append(byte)
        self._after_cr = byte == _CR

    def _negotiate(self, verb: int, option: int, replies: bytearray) -> None:
        if verb == DO:
            self._enable(self._us, option, option in _OURS, WILL, WONT, replies)
        elif verb == WILL:
            self._enable(self._him, option, option in _THEIRS, DO, DONT, replies)
        elif verb == DONT:
            self._disable(self._us, option, WONT, replies)
        else:
            self._disable(self._him, option, DONT, replies)

    @staticmethod
    def _enable(
        table: dict[int, int], option: int, ok: bool, yes: int, no: int, replies: bytearray
    ) -> None:
        state = table.get(option, _NO)
        if state == _WANT_YES:  # the client agrees to what we asked for
            table[option] = _YES
        elif state == _NO:
            if ok:
                table[option] = _YES
                replies += bytes((IAC, yes, option))
            else:
                replies += bytes((IAC, no, option))

    @staticmethod
    def _disable(table: dict[int, int], option: int, no: int, replies: bytearray) -> None:
        if table.get(option, _NO) == _YES:  # switched off after being on: acknowledge
            replies += bytes((IAC, no, option))
        table[option] = _NO

    def enabled(self, option: int, *, ours: bool = True) -> bool:
        """Whether ``option`` is on, on our side (``ours``) or on the client's."""
        return (self._us if ours else self._him).get(option) == _YES


class TelnetServer(TcpConsolePort):
    """A TCP port that serves one node's serial console over telnet, to any number of clients.

    ``port=0`` picks a free port; :attr:`port` tells which after :meth:`start`.
    """

    what = "telnet server"

    def __init__(
        self, hub: SerialHub, host: str = "127.0.0.1", port: int = 0,
        tickets: NodeTickets | None = None,
    ) -> None:  # fmt: skip
        super().__init__(host, port)
        self.hub = hub
        self.tickets = tickets  # None: no ticket asked (a loopback port)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        codec = TelnetCodec()
        try:
            writer.write(codec.greeting())
            if self.tickets is not None and not await self._admit(reader, writer, codec):
                return
            with self.hub.subscribe() as sub:
                await first_completed(_output(sub, writer), self._input(reader, writer, codec))
        except OSError as exc:
            log.debug("telnet client %s: %s", writer.get_extra_info("peername"), exc)

    async def _admit(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, codec: TelnetCodec
    ) -> bool:
        """Prompt for a ticket; True if it is a live one of this node (it is then used up)."""
        assert self.tickets is not None
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else ""
        wait = self.tickets.wait_for("telnet", address)
        if wait:  # too many wrong tickets from there: no prompt, no ticket used up
            log.warning("telnet %s: locked out of node %s for %d s", peer, self.tickets.node_name,
                        wait)  # fmt: skip
            writer.write(f"{self.tickets.locked_out('telnet', address, wait)}\r\n".encode())
            await writer.drain()
            return False
        writer.write(PROMPT)
        await writer.drain()
        try:
            async with asyncio.timeout(TICKET_TIMEOUT):
                line = await _read_line(reader, writer, codec)
        except TimeoutError:
            line, why = None, f"no ticket within {TICKET_TIMEOUT:g} seconds"
        else:
            why = "no ticket given" if not line else "not a live ticket of this node"
        if line and self.tickets.redeem("telnet", line):
            log.info("telnet %s: ticket accepted for node %s", peer, self.tickets.node_name)
            writer.write(b"\r\n")
            return True
        log.info("telnet %s: refused for node %s: %s", peer, self.tickets.node_name, why)
        wait = self.tickets.wrong("telnet", address) if line else 0
        said = self.tickets.locked_out("telnet", address, wait) if wait else None
        writer.write(f"\r\n{said or self.tickets.refusal('telnet')}\r\n".encode())
        await writer.drain()
        return False

    async def _input(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, codec: TelnetCodec
    ) -> None:
        while data := await reader.read(4096):
            keys, replies = codec.decode(data)
            if replies:
                writer.write(replies)
            with contextlib.suppress(ConsoleUnavailable):  # closing: the output side ends it
                await self.hub.write(keys)


async def _read_line(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, codec: TelnetCodec
) -> str | None:
    """One line typed at the prompt, not echoed; None: the client left, gave up (Ctrl-C,
    Ctrl-D) or sent more than :data:`TICKET_MAX` characters."""
    line = bytearray()
    while data := await reader.read(256):
        keys, replies = codec.decode(data)
        if replies:
            writer.write(replies)
        for byte in keys:
            if byte in (_CR, _LF):
                return line.decode("ascii", "replace").strip()
            if byte in _ABANDON:
                return None
            if byte in _BACKSPACES:
                del line[-1:]
            else:
                line.append(byte)
        if len(line) > TICKET_MAX:
            return None
    return None


async def _output(sub: Subscription, writer: asyncio.StreamWriter) -> None:
    async for chunk in sub:
        writer.write(escape(chunk))
        await writer.drain()
