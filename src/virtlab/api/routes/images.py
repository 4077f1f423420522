"""``/api/images``: import, list, show, delete, scan and verify; ``/api/imports``: progress."""

from __future__ import annotations

import asyncio
import base64
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from starlette.convertors import Convertor, register_url_convertor

from virtlab.api.auth import PrincipalDep, require_admin, require_role
from virtlab.api.deps import ImageServiceDep, RuntimeDep
from virtlab.api.errors import refusal, refusal_or_invalid
from virtlab.api.multipart import stream_file_field
from virtlab.api.schemas import (
    BootTestRequest,
    BootTestResult,
    Image,
    ImportedImage,
    ImportStatus,
    ScanResult,
    VerifyResult,
)
from virtlab.catalog import ImageRecord
from virtlab.names import UPLOAD
from virtlab.services.limits import Requester

router = APIRouter(tags=["images"])

TOO_MANY_IMPORTS = refusal(
    "As many imports are in flight as allowed (VIRTLAB_MAX_CONCURRENT_IMPORTS, or a user's "
    "share: VIRTLAB_MAX_CONCURRENT_IMPORTS_PER_USER); nothing was received. Retry-After says "
    "when to try again"
) | {"headers": {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}}}


class _Rest(Convertor[str]):
    """The rest of a path, whatever it holds (Starlette's ``path`` stops at a newline)."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("rest", _Rest())


IMPORT_ERRORS = {
    400: refusal("Malformed request"),
    409: refusal("Import id already in use"),
    413: refusal("Past the upload, expanded or virtual size cap"),
    429: TOO_MANY_IMPORTS,
    415: refusal("Not a format virtlab accepts"),
    422: refusal_or_invalid("Refused: unsafe or damaged image; the reason is in detail"),
    507: refusal("The data directory's disk is full"),
}
ImportId = Annotated[
    str | None,
    Query(
        pattern=r"^[A-Za-z0-9_-]{8,64}$",
        description="Your own id for this import, to follow it at /api/imports/{id} while it runs",
    ),
]
ImageName = Annotated[str, Path(min_length=1, max_length=255)]
# The whole rest of the path, newlines included (``{name:rest}``), so that ``a/b``, ``../x`` or
# ``a\nb`` is refused by the rule, with the rule, rather than routed elsewhere or nowhere.
UploadName = Annotated[UPLOAD.field("the uploaded file's name"), Path()]


def _imported(records: list[ImageRecord]) -> ImportedImage:
    first = Image.of(records[0])
    return ImportedImage(**first.model_dump(), also_imported=[r.name for r in records[1:]])


def _length(request: Request) -> int | None:
    value = request.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


@router.post(
    "/api/images/custom", status_code=201, response_model=ImportedImage, responses=IMPORT_ERRORS,
    summary="Import an image uploaded as multipart/form-data (field 'image')",
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "format": "binary"}}}}}}},
)  # fmt: skip
async def upload_custom(
    request: Request,
    images: ImageServiceDep,
    who: PrincipalDep,
    runtime: RuntimeDep,
    import_id: ImportId = None,
) -> ImportedImage:
    """`curl -X POST http://localhost:8080/api/images/custom -F "image=@router.vmdk"`.

    The content decides the format, never the file name. The image is checked, converted to
    qcow2 (ISO media stay ISO), verified and registered, or refused with the reason.
    """
    require_role(who, runtime.settings.upload_role, "upload images")
    part = await stream_file_field(
        request.stream(), request.headers.get("content-type", ""), "image"
    )
    records = await images.import_upload(
        part.chunks,
        part.filename,
        job_id=import_id,
        expected_size=_length(request),
        who=Requester.of(who),
    )
    return _imported(records)


@router.put(
    "/api/images/{name:rest}", status_code=201, response_model=ImportedImage,
    responses=IMPORT_ERRORS,
    summary="Import an image sent as the raw request body",
    openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {
        "schema": {"type": "string", "format": "binary"}}}}},
)  # fmt: skip
async def upload_raw(
    name: UploadName,
    request: Request,
    images: ImageServiceDep,
    who: PrincipalDep,
    runtime: RuntimeDep,
    import_id: ImportId = None,
) -> ImportedImage:
    """`curl -T router.vmdk http://localhost:8080/api/images/router.vmdk`; `name` is the file's
    name, used for the stored image's name (`router_<ms>.qcow2`). A name that is a path, holds
    control characters or is longer than 255 characters is refused (400)."""
    require_role(who, runtime.settings.upload_role, "upload images")
    records = await images.import_upload(
        request.stream(),
        name,
        job_id=import_id,
        expected_size=_length(request),
        who=Requester.of(who),
    )
    return _imported(records)


@router.get("/api/images", response_model=list[Image], summary="List the catalog")
def list_images(images: ImageServiceDep) -> list[Image]:
    return [Image.of(r) for r in images.list()]


@router.get(
    "/api/images/{name}",
    response_model=Image,
    summary="Show one image",
    responses={404: refusal("No such image")},
)
def get_image(name: ImageName, images: ImageServiceDep) -> Image:
    return Image.of(images.get(name))


@router.delete(
    "/api/images/{name}", status_code=204,
    summary="Delete an image, its file, and its base volume on every libvirt host",
    responses={404: refusal("No such image"),
               409: refusal("In use (by nodes on any host, or their checkpoints)")},
)  # fmt: skip
async def delete_image(
    name: ImageName, images: ImageServiceDep, who: PrincipalDep, runtime: RuntimeDep
) -> Response:
    """A libvirt host that does not answer now loses the image's base when it next does."""
    require_role(who, runtime.settings.image_delete_role, f"delete the image {name}")
    record = await asyncio.to_thread(images.delete, name)
    await runtime.host_bases.image_deleted(record)
    return Response(status_code=204)


@router.post(
    "/api/images/scan", response_model=ScanResult, summary="Rescan DATA/images",
    responses={429: TOO_MANY_IMPORTS},
)  # fmt: skip
async def scan_images(images: ImageServiceDep, who: PrincipalDep) -> ScanResult:
    """Admins only. Counts as one import in flight while it runs."""
    require_admin(who)
    with images.slots.take(Requester.of(who)):
        return ScanResult.of(await asyncio.to_thread(images.scan))


@router.post(
    "/api/images/verify",
    response_model=VerifyResult,
    summary="Rescan, then check every image's file, format, checksum and consistency",
    responses={429: TOO_MANY_IMPORTS},
)
async def verify_images(
    images: ImageServiceDep,
    who: PrincipalDep,
    fix: Annotated[
        bool,
        Query(
            description="repair what can be: convert mislabelled base "
            "files to qcow2, drop rows of missing files"
        ),
    ] = False,
) -> VerifyResult:
    """Everyone may check; only admins may fix. Counts as one import in flight while it runs
    (it may register and convert images)."""
    if fix:
        require_admin(who)
    with images.slots.take(Requester.of(who)):
        return VerifyResult.of(await asyncio.to_thread(images.verify, fix=fix))


@router.get(
    "/api/imports", response_model=list[ImportStatus], summary="Imports, running and recent"
)
def list_imports(images: ImageServiceDep) -> list[ImportStatus]:
    return [ImportStatus.of(j) for j in images.jobs.all()]


@router.get(
    "/api/imports/{import_id}",
    response_model=ImportStatus,
    summary="One import's progress",
    responses={404: refusal("No such import")},
)
def get_import(import_id: str, images: ImageServiceDep) -> ImportStatus:
    return ImportStatus.of(images.job(import_id))


@router.post(
    "/api/images/{name}/boot-test", response_model=BootTestResult,
    summary="Boot an image on a throwaway overlay and report what it showed",
    responses={404: refusal("No such image"),
               409: refusal("The host's memory cannot hold its RAM beside the running nodes")},
)  # fmt: skip
async def boot_test(name: ImageName, body: BootTestRequest, runtime: RuntimeDep) -> BootTestResult:
    """Boots the image (a disk on a throwaway overlay, or a CD-ROM with a blank disk), captures
    its serial output and a screenshot, and removes everything again."""
    assert runtime.boot_tests is not None
    result = await runtime.boot_tests.run(
        name, seconds=body.seconds, expect=body.expect, ram_mb=body.ram_mb
    )
    return BootTestResult(
        image=result.image, passed=result.passed, reason=result.reason, seconds=result.seconds,
        serial=result.serial,
        screenshot_png=base64.b64encode(result.screenshot).decode() if result.screenshot else None,
    )  # fmt: skip
