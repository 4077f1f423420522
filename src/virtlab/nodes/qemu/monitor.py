"""Typed QMP calls through QEMU's own ``qemu.qmp`` library; events instead of polling.

One ``Monitor`` per running node: it connects to the node's QMP unix socket, keeps every event
it sees (``SHUTDOWN``, ``STOP``, ``RESUME``, ``RESET``, …) in an async queue, and offers one
method per command virtlab uses. Nothing here scrapes the human monitor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener, ExecuteError, QMPClient, QMPError

from virtlab.errors import ToolFailure

__all__ = ["Monitor", "MonitorError"]

log = logging.getLogger("virtlab.qmp")


class MonitorError(ToolFailure):
    """A QMP command failed or the monitor went away."""


class Monitor:
    def __init__(self, name: str) -> None:
        self.name = name
        self._qmp = QMPClient(name)
        self._events = EventListener()
        self._qmp.register_listener(self._events)

    async def connect(self, path: Path) -> None:
        try:
            await self._qmp.connect(str(path))
        except (QMPError, OSError) as exc:
            raise MonitorError(f"cannot reach the QMP monitor of node {self.name}: {exc}") from exc

    async def close(self) -> None:
        with contextlib.suppress(QMPError, OSError, EOFError):  # the peer may be gone already
            await self._qmp.disconnect()
        self._qmp.remove_listener(self._events)

    async def _call(self, command: str, **arguments: Any) -> Any:
        try:
            return await self._qmp.execute(command, arguments or None)
        except ExecuteError as exc:
            raise MonitorError(f"QEMU of node {self.name} refused {command}: {exc}") from exc
        except (QMPError, OSError, EOFError) as exc:
            raise MonitorError(
                f"lost the QMP monitor of node {self.name} during {command} ({exc})"
            ) from exc

    # -- queries ------------------------------------------------------------------------------

    async def status(self) -> str:
        """QEMU's run state: ``running``, ``paused``, ``shutdown``, ``prelaunch``, …"""
        return str((await self._call("query-status"))["status"])

    async def version(self) -> str:
        qemu = (await self._call("query-version"))["qemu"]
        return f"{qemu['major']}.{qemu['minor']}.{qemu['micro']}"

    # -- commands -----------------------------------------------------------------------------

    async def system_powerdown(self) -> None:
        await self._call("system_powerdown")

    async def system_reset(self) -> None:
        await self._call("system_reset")

    async def stop(self) -> None:
        """Pause the vCPUs (suspend)."""
        await self._call("stop")

    async def cont(self) -> None:
        await self._call("cont")

    async def quit(self) -> None:
        with contextlib.suppress(MonitorError):  # QEMU may close the socket before it answers
            await self._call("quit")

    async def screendump(self, path: Path) -> None:
        """Write the display as PNG to ``path`` (QEMU 7.1 and later)."""
        await self._call("screendump", filename=str(path), format="png")

    async def set_link(self, device: str, up: bool) -> None:
        await self._call("set_link", name=device, up=up)

    # -- events -------------------------------------------------------------------------------

    async def wait_event(self, *names: str, timeout: float | None = None) -> dict[str, Any]:
        """The next event named one of ``names``; earlier others are dropped."""

        async def next_match() -> dict[str, Any]:
            while True:
                event = await self._events.get()
                if event["event"] in names:
                    return dict(event)

        return await asyncio.wait_for(next_match(), timeout)

    def seen(self, name: str) -> bool:
        """Whether an event named ``name`` arrived since the monitor connected."""
        return any(e["event"] == name for e in list(self._events.history))
