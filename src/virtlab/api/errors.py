"""How errors become HTTP responses: one table, ``{"detail": "..."}`` bodies."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from virtlab import errors

log = logging.getLogger("virtlab.api")

# Most specific first.
STATUS: list[tuple[type[errors.VirtlabError], int]] = [
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.TooLarge, 413),
    (errors.UnsupportedImage, 415),
    (errors.ImageRejected, 422),
    (errors.InvalidRequest, 400),
    (errors.InsufficientStorage, 507),
    (errors.ToolFailure, 500),
    (errors.VirtlabError, 500),
]


def status_for(exc: errors.VirtlabError) -> int:
    return next(code for cls, code in STATUS if isinstance(exc, cls))


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.VirtlabError)
    async def _virtlab_error(_request: Request, exc: errors.VirtlabError) -> JSONResponse:
        code = status_for(exc)
        if code >= 500:
            log.error("%s: %s (argv=%s)", type(exc).__name__, exc, getattr(exc, "argv", ""))
        return JSONResponse({"detail": str(exc)}, status_code=code)
