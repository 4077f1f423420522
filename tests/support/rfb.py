"""The client side of RFB (VNC) 3.8 for tests: a handshake and one raw framebuffer update.

Works over any byte transport: a WebSocket (as noVNC speaks through websockify) or a TCP stream
(as a desktop viewer does). With a password, the handshake uses VNC Authentication (security
type 2), its DES written here from RFC 6143 rather than taken from virtlab.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

__all__ = ["Rfb", "RfbRefused", "assert_not_blank", "des_answer"]


class RfbRefused(Exception):
    """The server said SecurityResult failed; the message is its reason."""


def des_answer(password: str, challenge: bytes) -> bytes:
    """VNC Authentication: the challenge DES-encrypted with the password, NUL-padded to 8
    bytes, as key, each key byte's bits mirrored (the reference implementation's quirk)."""
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in password.encode()[:8].ljust(8, b"\0"))
    des = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return des.update(challenge) + des.finalize()


class Rfb:
    """The client side of RFB 3.8, enough for a handshake and one raw framebuffer update."""

    def __init__(
        self, recv: Callable[[], Awaitable[bytes]], send: Callable[[bytes], Awaitable[None]]
    ) -> None:
        self._recv, self._send, self._buf = recv, send, b""
        self.bpp = 32

    @classmethod
    def over_websocket(cls, ws) -> Rfb:  # type: ignore[no-untyped-def]
        async def recv() -> bytes:
            frame = await ws.recv()
            assert isinstance(frame, bytes), "VNC frames must be binary"
            return frame

        return cls(recv, ws.send)

    @classmethod
    def over_stream(cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Rfb:
        async def recv() -> bytes:
            data = await reader.read(65536)
            assert data, "the VNC connection closed"
            return data

        async def send(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        return cls(recv, send)

    async def framebuffer(self, width: int, height: int) -> list[bytes]:
        return await self.full_screen(width, height, self.bpp)

    async def read(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._buf += await self._recv()
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    async def handshake(self, password: str | None = None) -> tuple[int, int, int, bytes]:
        """Version, security None (or VNC Authentication with ``password``), ClientInit
        shared; returns width, height, bpp, name. :class:`RfbRefused` if authentication
        fails."""
        assert await self.read(12) == b"RFB 003.008\n"
        await self._send(b"RFB 003.008\n")
        (count,) = await self.read(1)
        offered = await self.read(count)
        if password is None:
            assert 1 in offered, f"the server offers security type None (it offers {offered})"
            await self._send(bytes([1]))
        else:
            assert 2 in offered, f"the server offers VNC Authentication (it offers {offered})"
            await self._send(bytes([2]))
            await self._send(des_answer(password, await self.read(16)))
        result = await self.read(4)
        if result != b"\0\0\0\0":
            (length,) = struct.unpack(">I", await self.read(4))
            raise RfbRefused((await self.read(length)).decode())
        await self._send(bytes([1]))  # ClientInit: shared
        width, height = struct.unpack(">HH", await self.read(4))
        pixel_format = await self.read(16)
        (name_len,) = struct.unpack(">I", await self.read(4))
        self.bpp = pixel_format[0]
        self.name = await self.read(name_len)
        return width, height, self.bpp, self.name

    async def full_screen(self, width: int, height: int, bpp: int) -> list[bytes]:
        """Ask for the whole screen in Raw encoding; the rectangles' pixel data."""
        await self._send(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: Raw only
        await self._send(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))  # not incremental
        while True:
            (kind,) = await self.read(1)
            if kind == 0:  # FramebufferUpdate
                (count,) = struct.unpack(">xH", await self.read(3))
                rects = []
                for _ in range(count):
                    _x, _y, w, h, encoding = struct.unpack(">HHHHi", await self.read(12))
                    assert encoding == 0, f"asked for Raw only, got encoding {encoding}"
                    rects.append(await self.read(w * h * bpp // 8))
                return rects
            if kind == 1:  # SetColourMapEntries
                _first, n = struct.unpack(">xHH", await self.read(5))
                await self.read(6 * n)
            elif kind == 3:  # ServerCutText
                (n,) = struct.unpack(">3xI", await self.read(7))
                await self.read(n)
            else:
                assert kind == 2, f"unexpected RFB server message {kind}"  # Bell


def assert_not_blank(rects: list[bytes], bpp: int) -> None:
    pixels = b"".join(rects)
    size = bpp // 8
    assert pixels, "no pixel data"
    assert pixels != pixels[:size] * (len(pixels) // size), "the screen is one colour"
