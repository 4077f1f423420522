"""``/api/events``: a WebSocket stream of node, link, lab and import state changes (JSON)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from virtlab.api.access import Access, AccessDep
from virtlab.api.deps import RuntimeDep

router = APIRouter(tags=["events"])

_SHARED = frozenset({"import", "host", "overflow"})  # images and hosts are everyone's


class _Visible:
    """Which events one subscriber may see: an admin all; a user those of their labs, and
    imports. The names of their labs are re-read when a lab is made."""

    def __init__(self, access: Access, names: set[str] | None) -> None:
        self.access = access
        self.names = names

    async def allows(self, event: dict[str, Any]) -> bool:
        if self.names is None or event["kind"] in _SHARED:
            return True
        is_lab = event["kind"] == "lab"
        lab = event.get("name" if is_lab else "lab")
        if is_lab and lab not in self.names and event.get("state") in ("created", "deployed"):
            self.names = await asyncio.to_thread(self.access.visible_lab_names) or set()
        return lab in self.names


@router.websocket("/api/events")
async def events(websocket: WebSocket, runtime: RuntimeDep, access: AccessDep) -> None:
    """Each message is one JSON object: ``{"kind": "node"|"link"|"lab"|"import"|"host"|
    "overflow", "time": …, …}``. A client too slow to keep up gets ``overflow`` and is closed.
    A user gets the events of their own labs, of image imports and of hosts."""
    visible = _Visible(access, await asyncio.to_thread(access.visible_lab_names))
    await websocket.accept()
    try:
        async for event in runtime.events.subscribe():
            if await visible.allows(event):
                await websocket.send_json(event)
        await websocket.close(code=1013, reason="too slow: reconnect and re-read the state")
    except WebSocketDisconnect:
        pass
