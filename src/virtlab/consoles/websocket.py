"""WebSocket bridges for the browser: serial for xterm.js, VNC for noVNC.

The routes belong to the API layer; they hand their Starlette/FastAPI ``WebSocket`` over::

    @router.websocket("/api/nodes/{node_id}/console/serial")
    async def serial_console(ws: WebSocket, node_id: str, consoles: ConsolesDep) -> None:
        await serve_serial(ws, consoles.hub(node_id))

Both functions accept the WebSocket themselves unless the route already did, and return when
the session is over, having closed the WebSocket (unless the browser closed it first).

Close codes: 1000 when the node's console closed (QEMU exited) or the VNC server hung up;
1001 when the server stops the console; 1013 ("try again later") for a serial client dropped
for being too slow; 1011 when the VNC socket cannot be reached; 1003 for text frames on the
VNC bridge (RFB is binary).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from virtlab.consoles.hub import ConsoleUnavailable, SerialHub, Subscription, first_completed
from virtlab.consoles.vnc import close_writer, open_vnc

__all__ = ["serve_serial", "serve_vnc"]

log = logging.getLogger(__name__)

_Close = tuple[int, str] | None  # how to close the WebSocket; None: the client is gone
_CHUNK = 256 * 1024


async def _accept(ws: WebSocket, subprotocol: str | None = None) -> None:
    if ws.client_state is WebSocketState.CONNECTING:
        await ws.accept(subprotocol=subprotocol)


async def _close(ws: WebSocket, close: _Close) -> None:
    if close is None or ws.application_state is not WebSocketState.CONNECTED:
        return
    code, reason = close
    reason = reason.encode()[:123].decode(errors="ignore")  # a close frame's limit
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
        await ws.close(code, reason)


async def _receive(ws: WebSocket) -> bytes | str | None:
    """The next frame's payload; ``None`` once the client has gone."""
    try:
        message = await ws.receive()
    except (WebSocketDisconnect, OSError):
        return None
    if message["type"] == "websocket.disconnect":
        return None
    if message.get("bytes") is not None:
        return message["bytes"]
    return message.get("text") or ""


# --- serial ------------------------------------------------------------------------------


async def serve_serial(ws: WebSocket, hub: SerialHub) -> None:
    """Bridge ``ws`` to ``hub``: the scrollback and live output go out as binary frames (for
    xterm.js ``term.write(new Uint8Array(data))``); text or binary frames in are keystrokes."""
    await _accept(ws)
    with hub.subscribe() as sub:
        close = await first_completed(_serial_output(ws, sub, hub), _serial_input(ws, hub))
    await _close(ws, close)


async def _serial_output(ws: WebSocket, sub: Subscription, hub: SerialHub) -> _Close:
    try:
        async for chunk in sub:
            await ws.send_bytes(chunk)
    except (WebSocketDisconnect, OSError):
        return None
    if sub.end_reason == "slow":
        return 1013, "console client too slow"
    if hub.close_reason == "stopped":
        return 1001, "console stopped by the server"
    return 1000, "console closed: the node's QEMU exited"


async def _serial_input(ws: WebSocket, hub: SerialHub) -> _Close:
    while (data := await _receive(ws)) is not None:
        if isinstance(data, str):
            data = data.encode()
        with contextlib.suppress(ConsoleUnavailable):  # closing: the output side ends it
            await hub.write(data)
    return None


# --- VNC ---------------------------------------------------------------------------------


async def serve_vnc(ws: WebSocket, vnc_socket: Path) -> None:
    """Bridge ``ws`` to a new connection to QEMU's VNC unix socket, as websockify does.

    The subprotocol ``binary`` is chosen when the client offers it (noVNC does); RFB bytes go
    both ways untouched, as binary frames.
    """
    offered = ws.scope.get("subprotocols") or []
    await _accept(ws, "binary" if "binary" in offered else None)
    try:
        reader, writer = await open_vnc(vnc_socket)
    except ConsoleUnavailable as exc:  # the reason says no more: no server paths to browsers
        log.info("VNC WebSocket client refused: %s", exc)
        await _close(ws, (1011, "VNC console unavailable; is the node running?"))
        return
    try:
        close = await first_completed(_vnc_output(ws, reader), _vnc_input(ws, writer))
    finally:
        await close_writer(writer)
    await _close(ws, close)


async def _vnc_output(ws: WebSocket, reader: asyncio.StreamReader) -> _Close:
    try:
        while data := await reader.read(_CHUNK):
            await ws.send_bytes(data)
    except (WebSocketDisconnect, OSError):
        return None
    return 1000, "the VNC server closed the connection"


async def _vnc_input(ws: WebSocket, writer: asyncio.StreamWriter) -> _Close:
    while (data := await _receive(ws)) is not None:
        if isinstance(data, str):
            return 1003, "RFB needs binary frames"
        try:
            writer.write(data)
            await writer.drain()
        except OSError:
            return 1000, "the VNC server closed the connection"
    return None
