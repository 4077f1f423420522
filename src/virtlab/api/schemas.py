"""Wire schemas: what the API sends and takes. Built from domain records, never the reverse."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from virtlab.catalog import ImageRecord
from virtlab.images.progress import ImportJob
from virtlab.services.image_scan import ScanReport, VerifyReport


class Health(BaseModel):
    status: str = "ok"
    version: str


class Image(BaseModel):
    name: str = Field(examples=["router_1762805489189.qcow2"])
    kind: str = Field(description="disk, or cdrom for ISO media", examples=["disk"])
    format: str = Field(description="format of the stored file: qcow2 (or iso for media)")
    source_format: str = Field(description="format the content arrived in", examples=["vmdk"])
    source_variant: str = Field(examples=["streamOptimized"])
    source_name: str = Field(description="the uploaded file's name", examples=["router.vmdk"])
    wrappers: list[str] = Field(description="compression and archives peeled off, outermost first")
    virtual_size: int = Field(description="bytes the guest sees")
    actual_size: int = Field(description="bytes used on the host's disk")
    sha256: str = Field(description="of the stored file")
    source_sha256: str = Field(description="of the bytes uploaded")
    origin: str = Field(description="custom (uploaded) or base (found in the images directory)")
    path: str = Field(description="relative to DATA/images")
    created_at: datetime

    @classmethod
    def of(cls, record: ImageRecord) -> Image:
        fields = {f: getattr(record, f) for f in ImageRecord.__dataclass_fields__}
        fields["wrappers"] = [w for w in record.wrappers.split(",") if w]
        return cls(**fields)


class ImportedImage(Image):
    also_imported: list[str] = Field(
        default_factory=list,
        description="other images made from the same upload (an OVA with several disks)",
    )


class ImportStatus(BaseModel):
    id: str
    source_name: str
    state: str = Field(description="running, succeeded or failed")
    stage: str = Field(
        description="upload, unpack, inspect, examine, convert, verify, register, done"
    )
    percent: float = Field(description="progress within the current stage")
    bytes_received: int
    error: str | None
    images: list[str]

    @classmethod
    def of(cls, job: ImportJob) -> ImportStatus:
        return cls(
            id=job.id,
            source_name=job.source_name,
            state=job.state.value,
            stage=job.stage.value,
            percent=round(job.percent, 1),
            bytes_received=job.bytes_received,
            error=job.error,
            images=list(job.images),
        )


class ScanResult(BaseModel):
    added: list[str]
    refused: dict[str, str]
    missing: list[str]

    @classmethod
    def of(cls, report: ScanReport) -> ScanResult:
        return cls(added=report.added, refused=report.refused, missing=report.missing)


class ImageVerdict(BaseModel):
    name: str
    ok: bool
    problems: list[str]
    fixed: list[str]


class VerifyResult(BaseModel):
    ok: bool
    scan: ScanResult
    images: list[ImageVerdict]

    @classmethod
    def of(cls, report: VerifyReport) -> VerifyResult:
        return cls(
            ok=report.ok,
            scan=ScanResult.of(report.scan),
            images=[
                ImageVerdict(name=i.name, ok=i.ok, problems=i.problems, fixed=i.fixed)
                for i in report.images
            ],
        )


class BootTestRequest(BaseModel):
    seconds: float = Field(60, ge=1, le=3600, description="how long to wait")
    expect: str | None = Field(
        None, min_length=1, max_length=200,
        description="text that must appear on the serial console; without it the test passes "
        "when the machine still runs at the end",
    )  # fmt: skip
    ram_mb: int = Field(256, ge=16, le=65536)


class BootTestResult(BaseModel):
    image: str
    passed: bool
    reason: str
    seconds: float
    serial: str = Field(description="the last 64 KiB of serial output")
    screenshot_png: str | None = Field(description="base64 PNG of the screen at the end")
