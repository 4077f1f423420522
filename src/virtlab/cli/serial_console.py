"""``virtlab node console``: this terminal, in raw mode, bridged to a node's serial WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import termios
import tty

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

__all__ = ["ESCAPE", "run_console"]

ESCAPE = b"\x1d"  # Ctrl-], as in telnet


def run_console(ws_url: str, name: str, headers: dict[str, str] | None = None) -> int:
    """Bridge stdin/stdout to ``ws_url`` until Ctrl-] or the console closes; the exit status."""
    interactive = sys.stdin.isatty()
    saved = termios.tcgetattr(sys.stdin.fileno()) if interactive else None
    if interactive:
        sys.stderr.write(f"connected to {name}; Ctrl-] quits\r\n")
        tty.setraw(sys.stdin.fileno())
    try:
        return asyncio.run(_bridge(ws_url, headers or {}))
    finally:
        if saved is not None:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
            sys.stderr.write("\r\ndisconnected\r\n")


async def _bridge(ws_url: str, headers: dict[str, str]) -> int:
    try:
        websocket = await connect(ws_url, max_size=None, additional_headers=headers)
    except InvalidStatus as exc:
        detail = exc.response.body.decode(errors="replace") if exc.response.body else ""
        with contextlib.suppress(ValueError, KeyError, TypeError):
            detail = json.loads(detail)["detail"]
        sys.stderr.write(f"error: cannot open the console at {ws_url}: {detail or exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"error: cannot open the console at {ws_url}: {exc}\n")
        return 1
    loop = asyncio.get_running_loop()
    stdin = sys.stdin.fileno()
    keys: asyncio.Queue[bytes] = asyncio.Queue()

    def on_key() -> None:
        data = os.read(stdin, 1024)
        keys.put_nowait(data)

    loop.add_reader(stdin, on_key)

    async def send() -> None:
        while True:
            data = await keys.get()
            if not data or ESCAPE in data:
                before = data.split(ESCAPE)[0] if data else b""
                if before:
                    await websocket.send(before)
                return
            await websocket.send(data)

    async def receive() -> None:
        async for message in websocket:
            chunk = message if isinstance(message, bytes) else message.encode()
            os.write(sys.stdout.fileno(), chunk)

    tasks = [asyncio.create_task(send()), asyncio.create_task(receive())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_reader(stdin)
        for task in tasks:
            task.cancel()
        with contextlib.suppress(ConnectionClosed):
            await websocket.close()
        await asyncio.gather(*tasks, return_exceptions=True)
    code = websocket.close_code
    if code not in (None, 1000, 1005) and websocket.close_reason:
        sys.stderr.write(f"\r\nconsole closed: {websocket.close_reason}\r\n")
        return 1
    return 0
