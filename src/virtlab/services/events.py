"""State changes as a stream: nodes, links, labs and imports, for ``/api/events`` and the web UI.

Publishing never blocks: every subscriber has a bounded queue, and one that falls behind is
dropped (told so by a last ``overflow`` event) rather than allowed to slow the others. Events
may be published from worker threads (imports run in threads); they are handed to the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["EventBus"]

_QUEUE = 1000


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop subscribers live on (the server's); set at start-up."""
        self._loop = loop

    def publish(self, kind: str, **data: Any) -> None:
        """``kind`` such as ``node``, ``link``, ``lab``, ``import``; ``data`` is JSON-able."""
        event = {"kind": kind, "time": time.time(), **data}
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._deliver(event)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._deliver, event)

    def _deliver(self, event: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._subscribers.discard(queue)
                while not queue.empty():  # what it missed is lost anyway: say so, then end
                    queue.get_nowait()
                queue.put_nowait({"kind": "overflow", "time": time.time()})
                queue.put_nowait(None)

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(_QUEUE)
        self._subscribers.add(queue)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._subscribers.discard(queue)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
