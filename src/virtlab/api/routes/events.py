"""``/api/events``: a WebSocket stream of node, link, lab and import state changes (JSON)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from virtlab.api.deps import RuntimeDep

router = APIRouter(tags=["events"])


@router.websocket("/api/events")
async def events(websocket: WebSocket, runtime: RuntimeDep) -> None:
    """Each message is one JSON object: ``{"kind": "node"|"link"|"lab"|"import"|"overflow",
    "time": …, …}``. A client too slow to keep up gets ``overflow`` and is closed."""
    await websocket.accept()
    try:
        async for event in runtime.events.subscribe():
            await websocket.send_json(event)
        await websocket.close(code=1013, reason="too slow: reconnect and re-read the state")
    except WebSocketDisconnect:
        pass
