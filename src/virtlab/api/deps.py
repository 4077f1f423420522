"""FastAPI dependencies: services from the app's ``Runtime``, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from virtlab.runtime import Runtime
from virtlab.services.images import ImageService
from virtlab.services.nodes import NodeService


def get_runtime(request: HTTPConnection) -> Runtime:
    return request.app.state.runtime


def get_images(request: HTTPConnection) -> ImageService:
    return get_runtime(request).images


def get_nodes(request: HTTPConnection) -> NodeService:
    return get_runtime(request).nodes


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
NodeServiceDep = Annotated[NodeService, Depends(get_nodes)]
ImageServiceDep = Annotated[ImageService, Depends(get_images)]
