"""``/api/labs/{name}/archive`` and ``/api/labs/import``: a lab in one file, and back."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import Field
from starlette.background import BackgroundTask

from virtlab.api.auth import PrincipalDep, require_role
from virtlab.api.deps import RuntimeDep
from virtlab.api.errors import refusal, refusal_or_invalid
from virtlab.api.routes.images import TOO_MANY_IMPORTS
from virtlab.api.routes.labs import LabInfo, LabName
from virtlab.names import LAB
from virtlab.services.limits import Requester

ImportName = LAB.field("a name for the lab (default: its own)")

router = APIRouter(tags=["labs"])

ARCHIVE_ERRORS = {
    404: refusal("No such lab"),
    409: refusal("Some of the lab's nodes are not stopped (they are named)"),
}
IMPORT_ERRORS = {
    400: refusal("Not a lab archive, or one with unexpected contents"),
    404: refusal("A base image is neither here nor in the archive (named)"),
    409: refusal("A lab of that name exists, or its nodes would pass the user's node limit"),
    413: refusal("Past the upload cap, or an oversized manifest"),
    422: refusal_or_invalid("A disk or image in the archive is refused; the reason is in detail"),
    429: TOO_MANY_IMPORTS,
    507: refusal("The data directory's disk is full"),
}  # fmt: skip


class LabImported(LabInfo):
    images_imported: list[str] = Field(description="catalog images made from the archive")
    images_reused: list[str] = Field(description="catalog images already here (same sha256)")


@router.get(
    "/api/labs/{name}/archive", response_class=StreamingResponse,
    responses={**ARCHIVE_ERRORS, 200: {"content": {"application/x-tar": {}}}},
    summary="The lab, its node disks and optionally its base images, as one tar file",
)  # fmt: skip
async def archive_lab(
    name: LabName, runtime: RuntimeDep,
    images: Annotated[bool, Query(description="include the base images")] = False,
) -> StreamingResponse:  # fmt: skip
    """`curl -o lab.tar 'URL/api/labs/NAME/archive?images=true'`. Every node must be stopped.
    Import it on another virtlab with `POST /api/labs/import`."""
    stream = await runtime.archiver.open_export(name, with_images=images)
    return StreamingResponse(
        stream.chunks(), media_type="application/x-tar", background=BackgroundTask(stream.close),
        headers={"content-length": str(stream.size),
                 "content-disposition": f'attachment; filename="{name}.tar"'},
    )  # fmt: skip


@router.post(
    "/api/labs/import", status_code=201, response_model=LabImported, responses=IMPORT_ERRORS,
    summary="Make a lab from a lab archive sent as the raw request body (nodes stopped)",
    openapi_extra={"requestBody": {"required": True, "content": {"application/x-tar": {
        "schema": {"type": "string", "format": "binary"}}}}},
)  # fmt: skip
async def import_lab(
    request: Request, runtime: RuntimeDep, who: PrincipalDep,
    name: Annotated[ImportName | None, Query()] = None,
    checkpoints: Annotated[bool, Query(
        description="keep the nodes' checkpoints (false: delete them from the disks; QEMU "
                    "loads a checkpoint's saved machine state as it is)")] = True,
) -> LabImported:  # fmt: skip
    """`curl -X POST -T lab.tar URL/api/labs/import` (the body is streamed to disk). Base images are
    found here by sha256, or imported from the archive; node disks are checked like uploads."""
    require_role(who, runtime.settings.upload_role, "import lab archives (they may add images)")
    length = request.headers.get("content-length", "")
    done = await runtime.archiver.import_stream(
        request.stream(), expected_size=int(length) if length.isdigit() else None, name=name,
        checkpoints=checkpoints, owner_id=who.user_id, who=Requester.of(who),
    )  # fmt: skip
    info = LabInfo.of(runtime.labs.summary(done.lab))
    return LabImported(**info.model_dump(), images_imported=done.images_imported,
                       images_reused=done.images_reused)  # fmt: skip
