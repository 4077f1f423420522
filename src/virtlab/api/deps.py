"""FastAPI dependencies: services from the app's ``Runtime``, as ``Annotated`` aliases.

They are ``async def`` although they never wait: FastAPI runs a plain ``def`` dependency in
a worker thread, and a hop to a thread and back (0.1 to 0.2 ms on a small host, more under
load) buys nothing for looking up an attribute.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from virtlab.runtime import Runtime
from virtlab.services.images import ImageService
from virtlab.services.nodes import NodeService


async def get_runtime(request: HTTPConnection) -> Runtime:
    return request.app.state.runtime


async def get_images(request: HTTPConnection) -> ImageService:
    runtime: Runtime = request.app.state.runtime
    return runtime.images


async def get_nodes(request: HTTPConnection) -> NodeService:
    runtime: Runtime = request.app.state.runtime
    return runtime.nodes


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
NodeServiceDep = Annotated[NodeService, Depends(get_nodes)]
ImageServiceDep = Annotated[ImageService, Depends(get_images)]
