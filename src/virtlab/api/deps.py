"""FastAPI dependencies: services from the app's ``Runtime``, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from virtlab.runtime import Runtime
from virtlab.services.images import ImageService


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def get_images(request: Request) -> ImageService:
    return get_runtime(request).images


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
ImageServiceDep = Annotated[ImageService, Depends(get_images)]
