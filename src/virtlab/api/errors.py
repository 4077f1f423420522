"""How errors become HTTP responses: one table, ``{"detail": "..."}`` bodies."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket, WebSocketState

from virtlab import errors

log = logging.getLogger("virtlab.api")

DETAIL_SCHEMA = {
    "type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"],
}  # fmt: skip


def refusal(description: str) -> dict:
    """An error response for a route's ``responses=``: a ``{"detail": "..."}`` body."""
    return {"description": description, "content": {"application/json": {"schema": DETAIL_SCHEMA}}}


def refusal_or_invalid(description: str) -> dict:
    """A 422 of a route that refuses content with 422 itself (``{"detail": "..."}``), while
    FastAPI answers a malformed parameter with 422 too, its ``detail`` a list of problems."""
    problems = {"type": "array", "items": {
        "type": "object", "required": ["loc", "msg", "type"],
        "properties": {"loc": {"type": "array"}, "msg": {"type": "string"},
                       "type": {"type": "string"}},
    }}  # fmt: skip
    schema = {
        "type": "object", "required": ["detail"],
        "properties": {"detail": {"anyOf": [{"type": "string"}, problems]}},
    }  # fmt: skip
    return {
        "description": f"{description}; or a malformed parameter (detail lists the problems)",
        "content": {"application/json": {"schema": schema}},
    }


# Most specific first.
STATUS: list[tuple[type[errors.VirtlabError], int]] = [
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.TooManyAttempts, 429),
    (errors.TooManyImports, 429),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.TooLarge, 413),
    (errors.UnsupportedImage, 415),
    (errors.ImageRejected, 422),
    (errors.InvalidRequest, 400),
    (errors.InsufficientStorage, 507),
    (errors.CatalogBusy, 503),
    (errors.ToolFailure, 500),
    (errors.VirtlabError, 500),
]


def status_for(exc: errors.VirtlabError) -> int:
    return next(code for cls, code in STATUS if isinstance(exc, cls))


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.VirtlabError)
    async def _virtlab_error(conn: HTTPConnection, exc: errors.VirtlabError) -> JSONResponse | None:
        code = status_for(exc)
        if code >= 500:
            log.error("%s: %s (argv=%s)", type(exc).__name__, exc, getattr(exc, "argv", ""))
        headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
        if isinstance(exc, errors.TooManyAttempts | errors.TooManyImports | errors.CatalogBusy):
            headers = {"Retry-After": str(exc.retry_after)}
        response = JSONResponse({"detail": str(exc)}, status_code=code, headers=headers)
        if isinstance(conn, WebSocket):
            await _refuse_websocket(conn, response, exc)
            return None
        return response


async def _refuse_websocket(ws: WebSocket, response: JSONResponse, exc: Exception) -> None:
    """A WebSocket refused by a dependency. No login, or another site's page (401, 403):
    before it is accepted, the HTTP answer to its handshake carries the status and the message
    (uvicorn has the denial-response extension), else it is closed with 1008 (policy
    violation). Anything else (no such node: 404): accepted, then closed with 4000 + status
    and the reason, which a browser's WebSocket can read."""
    connecting = ws.application_state == WebSocketState.CONNECTING
    if connecting and response.status_code in (401, 403):
        if "websocket.http.response" in ws.scope.get("extensions", {}):
            await ws.send_denial_response(response)
        else:
            await ws.close(code=1008, reason=str(exc)[:120])
    elif connecting:
        await ws.accept()
        await ws.close(code=4000 + response.status_code, reason=str(exc)[:120])
    elif ws.application_state == WebSocketState.CONNECTED:
        await ws.close(code=1011, reason=str(exc)[:120])
