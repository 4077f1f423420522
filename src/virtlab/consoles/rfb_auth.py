"""VNC Authentication in front of QEMU: the node's VNC port asks for a ticket itself.

When a node's console port listens beyond loopback, :class:`~virtlab.consoles.vnc.VncTcpProxy`
speaks the start of RFB (RFC 6143) to the client instead of passing bytes through:

1. ``RFB 003.008``; a 3.7 or 3.8 client is offered security type 2 (VNC Authentication) alone,
   a 3.3 client is told it (3.3 lets the server choose).
2. A random 16-byte challenge; the client answers with it DES-encrypted under its password.
   The answer is checked against each live VNC ticket of the node (:func:`vnc_response`); the
   matching ticket is used up, so a recorded answer is worth nothing afterwards.
3. SecurityResult: OK, or failed with the reason (3.8) and the connection closed.
4. The client's ClientInit is read; only then is QEMU's unix socket opened, with security None
   (QEMU's VNC has no password: the browser's noVNC path reaches it through the server's
   authenticated WebSocket), and the client's ClientInit passed on. From there on bytes are
   piped untouched, QEMU's ServerInit first.

Why here and not QEMU's own password (QMP ``set_password``): QEMU has one VNC password per
display, shared by every client, so two users' tickets would overwrite each other, a ticket
would stay valid for anyone until it expired, and the web UI's noVNC (which reaches the same
QEMU display) would have to be given the password too.

VNC's DES: the password, NUL-padded to 8 bytes, is the key with the bits of each byte
reversed (a quirk of the original implementation); single DES is TripleDES with the key
repeated three times.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import struct
from pathlib import Path

from virtlab.auth.tickets import NodeTickets

__all__ = ["HANDSHAKE_TIMEOUT", "admit", "connect_qemu", "vnc_response"]

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 30.0  # seconds a client has to authenticate
SEC_NONE, SEC_VNC = 1, 2
_VERSION = b"RFB 003.008\n"
_OK, _FAILED = struct.pack(">I", 0), struct.pack(">I", 1)


def _reverse_bits(byte: int) -> int:
    return int(f"{byte:08b}"[::-1], 2)


def vnc_response(password: str, challenge: bytes) -> bytes:
    """The answer to a 16-byte VNC Authentication challenge for ``password``."""
    # cryptography is imported at the first VNC login, not with the server (a tenth of a second
    # of every start-up otherwise).
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    key = bytes(_reverse_bits(b) for b in password.encode("latin-1")[:8].ljust(8, b"\0"))
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


def _minor(version: bytes) -> int:
    """The client's RFB minor version: 3, 7 or 8 (others count as 3, as RFC 6143 says)."""
    if len(version) != 12 or not version.startswith(b"RFB 003.") or not version.endswith(b"\n"):
        raise ValueError(f"not an RFB client (it sent {version[:12]!r})")
    minor = int(version[8:11]) if version[8:11].isdigit() else 3
    return 8 if minor >= 8 else 7 if minor == 7 else 3


async def admit(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tickets: NodeTickets
) -> bytes | None:
    """Authenticate a client with a VNC ticket of the node; its ClientInit, or None if refused
    (it has then been told why, when its RFB version allows)."""
    peer = writer.get_extra_info("peername")
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            writer.write(_VERSION)
            minor = _minor(await reader.readexactly(12))
            if minor == 3:
                writer.write(struct.pack(">I", SEC_VNC))
            else:
                writer.write(bytes((1, SEC_VNC)))
                (chosen,) = await reader.readexactly(1)
                if chosen != SEC_VNC:
                    await _fail(writer, minor, "this port needs VNC Authentication (a ticket)")
                    return None
            challenge = os.urandom(16)
            writer.write(challenge)
            answer = await reader.readexactly(16)
            address = str(peer[0]) if peer else ""
            wait = tickets.wait_for("vnc", address)
            if wait:  # too many wrong tickets from there: none is tried, none used up
                log.warning("VNC %s: locked out of node %s for %d s", peer, tickets.node_name, wait)
                await _fail(writer, minor, tickets.locked_out("vnc", address, wait))
                return None
            if not tickets.redeem_if(
                "vnc", lambda secret: hmac.compare_digest(vnc_response(secret, challenge), answer)
            ):
                log.info("VNC %s: refused for node %s: no matching ticket", peer, tickets.node_name)
                wait = tickets.wrong("vnc", address)
                said = tickets.locked_out("vnc", address, wait) if wait else None
                await _fail(writer, minor, said or tickets.refusal("vnc"))
                return None
            writer.write(_OK)
            client_init = await reader.readexactly(1)
    except (TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
        log.info("VNC %s: handshake for node %s abandoned: %s", peer, tickets.node_name, exc)
        return None
    log.info("VNC %s: ticket accepted for node %s", peer, tickets.node_name)
    return client_init


async def _fail(writer: asyncio.StreamWriter, minor: int, reason: str) -> None:
    writer.write(_FAILED)
    if minor >= 8:
        data = reason.encode()
        writer.write(struct.pack(">I", len(data)) + data)
    await writer.drain()


async def connect_qemu(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client_init: bytes, where: Path
) -> None:
    """Take QEMU's side of the handshake up to ClientInit (sent on the client's behalf), so
    that what QEMU says next (ServerInit) goes to the client as it is."""
    async with asyncio.timeout(HANDSHAKE_TIMEOUT):
        version = await reader.readexactly(12)
        if not version.startswith(b"RFB 003."):
            raise ConnectionError(f"the VNC socket {where} does not speak RFB ({version!r})")
        writer.write(_VERSION)
        (count,) = await reader.readexactly(1)
        types = await reader.readexactly(count) if count else b""
        if SEC_NONE not in types:
            raise ConnectionError(
                f"QEMU's VNC at {where} offers security types {list(types)}, not None; "
                "restart the node (virtlab starts QEMU's VNC without a password)"
            )
        writer.write(bytes((SEC_NONE,)))
        if await reader.readexactly(4) != _OK:
            raise ConnectionError(f"QEMU's VNC at {where} refused security None")
        writer.write(client_init)
        await writer.drain()
