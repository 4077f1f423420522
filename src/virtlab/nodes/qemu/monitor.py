"""Typed QMP calls through QEMU's own ``qemu.qmp`` library; events instead of polling.

One ``Monitor`` per running node: it connects to the node's QMP unix socket, keeps every event
it sees (``SHUTDOWN``, ``STOP``, ``RESUME``, ``RESET``, …) in an async queue, and offers one
method per command virtlab uses. Nothing here scrapes the human monitor.

Checkpoints are QMP jobs (``snapshot-save``, ``snapshot-delete``): :meth:`Monitor.run_job`
starts one, waits for its ``JOB_STATUS_CHANGE`` to ``concluded`` (a listener of its own, so the
node's other events are not consumed), reads its error from ``query-jobs`` and dismisses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener, ExecuteError, QMPClient, QMPError

from virtlab.errors import InsufficientStorage, ToolFailure

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

    async def machine_type(self) -> str:
        """The resolved machine type: ``pc`` is an alias (``pc-i440fx-7.2`` on QEMU 7.2)."""
        kind = str(await self._call("qom-get", path="/machine", property="type"))
        return kind.removesuffix("-machine")

    async def snapshots(self, node: str) -> dict[str, int]:
        """The internal snapshots of block node ``node``: tag -> bytes of machine state."""
        for block in await self._call("query-named-block-nodes", flat=True):
            if block.get("node-name") == node:
                found = block.get("image", {}).get("snapshots", [])
                return {str(s["name"]): int(s.get("vm-state-size", 0)) for s in found}
        raise MonitorError(f"QEMU of node {self.name} has no block node {node}")

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

    async def snapshot_save(self, tag: str, node: str) -> None:
        """Save memory, devices and ``node``'s blocks as internal snapshot ``tag`` of ``node``.
        The caller pauses the guest first (a running guest would change during the save)."""
        await self.run_job("snapshot-save", tag=tag, vmstate=node, devices=[node])

    async def snapshot_delete(self, tag: str, node: str) -> None:
        await self.run_job("snapshot-delete", tag=tag, devices=[node])

    async def run_job(self, command: str, **arguments: Any) -> None:
        """Run a QMP job to its end; raise :class:`MonitorError` with its error if it failed."""
        job_id = f"virtlab-{uuid.uuid4().hex[:12]}"
        listener = EventListener(("JOB_STATUS_CHANGE",))
        with self._qmp.listen(listener):  # listening before the job starts: no event missed
            await self._call(command, **{"job-id": job_id}, **arguments)
            while True:
                data = (await listener.get())["data"]
                if data.get("id") == job_id and data.get("status") == "concluded":
                    break
        jobs = await self._call("query-jobs")
        error = next((j.get("error") for j in jobs if j.get("id") == job_id), None)
        await self._call("job-dismiss", id=job_id)
        if error and "No space left on device" in str(error):
            raise InsufficientStorage(
                f"QEMU of node {self.name} could not {command}: the data directory's disk is "
                f"full ({error}); free some space and try again"
            )
        if error:
            raise MonitorError(f"QEMU of node {self.name} could not {command}: {error}")

    # -- events -------------------------------------------------------------------------------

    async def wait_event(self, *names: str, timeout: float | None = None) -> dict[str, Any]:
        """The next event named one of ``names``; earlier others are dropped."""

        async def next_match() -> dict[str, Any]:
            while True:
                event = await self._events.get()
                if event["event"] in names:
                    return dict(event)

        return await asyncio.wait_for(next_match(), timeout)

    async def events(self, *names: str) -> AsyncIterator[dict[str, Any]]:
        """Every event named one of ``names`` from now on, until the monitor closes; a
        listener of its own, so the node's other waiters miss nothing."""
        listener = EventListener(names)
        with self._qmp.listen(listener):
            while True:
                yield dict(await listener.get())

    def seen(self, name: str) -> bool:
        """Whether an event named ``name`` arrived since the monitor connected."""
        return any(e["event"] == name for e in list(self._events.history))
