"""``create_app(settings)``: the FastAPI application over one ``Runtime``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline

from virtlab import __version__
from virtlab.api import errors, web
from virtlab.api.access import guard_path
from virtlab.api.auth import principal
from virtlab.api.routes import (
    checkpoints,
    events,
    health,
    hosts,
    images,
    lab_archive,
    labs,
    limits,
    links,
    nodes,
    server,
    users,
)
from virtlab.runtime import Runtime
from virtlab.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    runtime = Runtime.build(settings or Settings())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    # FastAPIOffline serves the Swagger UI and ReDoc assets from the installed package, so the
    # documentation pages work on a machine with no internet.
    app = FastAPIOffline(
        title="virtlab",
        version=__version__,
        description="A self-hosted virtual network lab: images, nodes, labs, consoles.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    errors.install(app)
    # Open to all: whether the server is up, the login, and the web UI's files (its page shows
    # a login form). Every other router, REST, WebSocket and download alike, needs a login.
    app.include_router(health.router)
    app.include_router(users.public)
    # Routers whose paths name a node (ref), a lab (name) or a link (link_id) also check that
    # it is the requester's (virtlab.api.access).
    logged_in, owned = [Depends(principal)], [Depends(principal), Depends(guard_path)]
    refused = {
        401: errors.refusal("Not logged in, or the token is unknown, expired or revoked"),
        403: errors.refusal("A page of another site, or a role this needs"),
    }
    for module in (users, images, events, server, limits, hosts):
        app.include_router(module.router, dependencies=logged_in, responses=refused)
    for module in (nodes, labs, lab_archive, checkpoints, links):
        app.include_router(module.router, dependencies=owned, responses=refused)
    web.install(app)  # the web UI at /, once built (make setup)
    return app
