"""``create_app(settings)``: the FastAPI application over one ``Runtime``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from virtlab import __version__
from virtlab.api import errors, web
from virtlab.api.routes import checkpoints, events, health, images, lab_archive, labs, links, nodes
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
    app.include_router(health.router)
    app.include_router(images.router)
    app.include_router(nodes.router)
    app.include_router(labs.router)
    app.include_router(lab_archive.router)
    app.include_router(checkpoints.router)
    app.include_router(links.router)
    app.include_router(events.router)
    web.install(app)  # the web UI at /, once built (make setup)
    return app
