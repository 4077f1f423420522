"""Stages 2 to 7 of an import, for an upload already staged (see ``receive``).

    unpack ─► inspect (Python) ─► examine (qemu-img info + check) ─► convert ─► verify ─► register

Each stage raises an ``ImageRejected`` subclass with a reason a person can act on, or a
``VirtlabError`` for faults that are not the input's. Nothing is registered unless every stage
passed; the staging directory is removed whatever happens. Runs in a worker thread.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from virtlab._util.faults import FaultPoint
from virtlab.catalog import Catalog, ImageRecord, ImageRepository
from virtlab.errors import CorruptImage, ToolFailure, UnsafeImage
from virtlab.images.formats import ImageFormat
from virtlab.images.inspect import Inspection, inspect_file
from virtlab.images.progress import ImportJob, Stage
from virtlab.images.qemu_img import QemuImg
from virtlab.images.receive import Received
from virtlab.images.store import ImageStore, Staging, safe_stem
from virtlab.images.unpack import Payload, unwrap
from virtlab.images.writeback import Writeback, fsync_file

__all__ = ["ImportLimits", "Importer", "sha256_file"]


@dataclass(frozen=True)
class ImportLimits:
    max_expanded_bytes: int
    max_virtual_size: int


@dataclass(frozen=True)
class _Prepared:
    """One image that passed every check and waits in staging to be registered."""

    file: Path
    payload: Payload
    inspection: Inspection
    converted: bool
    virtual_size: int
    digest: Future[str] | None = None  # sha256 of ``file``, computed while it was verified


class Importer:
    def __init__(
        self,
        *,
        catalog: Catalog,
        store: ImageStore,
        qemu_img: QemuImg,
        limits: ImportLimits,
        fault_point: str | None = None,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.qemu_img = qemu_img
        self.limits = limits
        self.fault_point = fault_point
        self._fault = FaultPoint(fault_point)

    def run(
        self,
        staging: Staging,
        received: Received,
        *,
        source_name: str,
        job: ImportJob,
    ) -> list[ImageRecord]:
        """Take a staged upload through every stage; the staging directory never survives."""
        try:
            job.enter(Stage.UNPACK)
            payloads = unwrap(
                received.path,
                label=source_name,
                workdir=staging.path,
                max_expanded=self.limits.max_expanded_bytes,
                on_progress=lambda done: job.advance(100.0 * done / max(received.size, 1)),
            )
            prepared = [self._prepare(staging, p, job) for p in payloads]
            self._fault("before_register")
            job.enter(Stage.REGISTER)
            return self._register(staging, prepared, received, source_name)
        finally:
            self.store.discard(staging)

    # -- the stages --------------------------------------------------------------------------

    def _prepare(self, staging: Staging, payload: Payload, job: ImportJob) -> _Prepared:
        job.enter(Stage.INSPECT)
        inspection = inspect_file(
            payload.path,
            display_name=payload.label,
            max_virtual_size=self.limits.max_virtual_size,
        )
        job.enter(Stage.EXAMINE)
        clean = self.examine(payload.path, payload.label, inspection)
        if inspection.format is ImageFormat.ISO or (
            inspection.format is ImageFormat.QCOW2 and clean
        ):
            return _Prepared(payload.path, payload, inspection, False, inspection.virtual_size)
        job.enter(Stage.CONVERT)
        out = staging.file(f"{payload.path.name}.qcow2")
        try:
            with Writeback(out):  # the result goes to the disk while it is made
                self.qemu_img.convert(
                    payload.path, inspection.format.qemu_driver, out,
                    lambda percent: self._converting(job, percent), label=payload.label,
                )  # fmt: skip
        except ToolFailure as exc:
            raise CorruptImage(
                f"{payload.label} ({inspection.format.value}) could not be converted: "
                f"{_first_line(exc.stderr)}; the file is damaged past its header"
            ) from exc
        self._fault("after_convert")
        job.enter(Stage.VERIFY)
        # Hash the result, and wait for the rest of it to reach the disk, while qemu-img checks
        # and compares it.
        with ThreadPoolExecutor(2, "virtlab-digest") as pool:
            digest = pool.submit(sha256_file, out)
            synced = pool.submit(fsync_file, out)
            virtual_size = self.verify_conversion(payload.path, inspection, out, payload.label)
            synced.result()  # its errors (a full disk) surface here
            digest.result()
        return _Prepared(out, payload, inspection, True, virtual_size, digest)

    def examine(self, path: Path, label: str, inspection: Inspection) -> bool:
        """The second opinion: qemu-img must agree with the inspector, and find no damage.

        Returns whether ``qemu-img check`` found the image fully clean (no leaks either).
        """
        fmt = inspection.format
        what = f"{label} ({fmt.value})"
        try:
            info = self.qemu_img.info(path, fmt.qemu_driver)
        except ToolFailure as exc:
            raise CorruptImage(
                f"{what} cannot be read by qemu-img ({_first_line(exc.stderr)}); the file is "
                "damaged or not what its header says"
            ) from exc
        if info.format != fmt.qemu_driver:
            raise UnsafeImage(
                f"{what}: qemu-img reads it as {info.format}, not {fmt.qemu_driver}; refusing an "
                "image that means different things to different readers"
            )
        if (
            info.backing_filename
            or info.data_file
            or any(Path(e) != path for e in info.extent_files)
        ):
            raise UnsafeImage(
                f"{what}: qemu-img says it refers to another file; refusing to read files "
                "outside the upload"
            )
        if info.encrypted:
            raise UnsafeImage(f"{what} is encrypted; decrypt it before importing it")
        if info.virtual_size > self.limits.max_virtual_size:
            raise UnsafeImage(f"{what}: qemu-img reports a virtual size past the limit")
        if fmt in (ImageFormat.RAW, ImageFormat.ISO):
            return False
        check = self.qemu_img.check(path, fmt.qemu_driver)
        if check.damaged:
            raise CorruptImage(
                f"{what} is damaged: qemu-img check found {check.corruptions} corruption(s) and "
                f"{check.check_errors} error(s) ({_first_line(check.message)}); repair it with "
                f"`qemu-img check -r all` on a copy, or export it again"
            )
        return check.clean

    def verify_conversion(
        self,
        source: Path,
        inspection: Inspection,
        result: Path,
        label: str,
    ) -> int:
        """The result is a clean qcow2 whose guest-visible content equals the source's."""
        info = self.qemu_img.info(result, "qcow2")
        check = self.qemu_img.check(result, "qcow2")
        if info.format != "qcow2" or info.backing_filename or not check.clean:
            raise ToolFailure(
                f"converting {label} produced a qcow2 that does not pass qemu-img check "
                f"({_first_line(check.message)}); nothing was registered"
            )
        if not self.qemu_img.compare(source, inspection.format.qemu_driver, result, "qcow2"):
            raise ToolFailure(
                f"converting {label} changed what the guest would see (qemu-img compare "
                "differs); nothing was registered; please report this"
            )
        return info.virtual_size

    def _register(
        self,
        staging: Staging,
        prepared: list[_Prepared],
        received: Received,
        source_name: str,
    ) -> list[ImageRecord]:
        stem = safe_stem(source_name)
        with self.catalog.session() as session:
            taken = {r.name.casefold() for r in ImageRepository(session).list()}
        records = []
        for index, item in enumerate(prepared, start=1):
            suffix = ".iso" if item.inspection.format is ImageFormat.ISO else ".qcow2"
            disk_stem = stem if len(prepared) == 1 else f"{stem}-disk{index}"
            name = self.store.custom_name(disk_stem, suffix, taken)
            taken.add(name.casefold())
            records.append(self._record(item, name, received, source_name))
        self.store.record_intent(staging, [r.path for r in records])
        self._fault("after_intent")
        with ExitStack() as undo:
            with self.catalog.session() as session:
                repo = ImageRepository(session)
                for item, record in zip(prepared, records, strict=True):
                    repo.add(record)
                    self.store.move_into_place(item.file, record.path)
                    undo.callback(self.store.unpublish, record.path)
                    self._fault("after_move")
            # Committed: the files stay. A commit that fails (a busy catalog, a full disk)
            # takes them back out first.
            undo.pop_all()
        self._fault("after_commit")
        return records

    def _record(
        self,
        item: _Prepared,
        name: str,
        received: Received,
        source_name: str,
    ) -> ImageRecord:
        fmt = item.inspection.format
        # An unwrapped, unconverted file is byte for byte the upload: its hash is already known.
        if item.digest is not None:
            digest = item.digest.result()
        elif not item.converted and not item.payload.wrappers:
            digest = received.sha256
        else:
            digest = sha256_file(item.file)
        return ImageRecord(
            name=name,
            kind=fmt.kind.value,
            format="iso" if fmt is ImageFormat.ISO else "qcow2",
            source_format=fmt.value,
            source_variant=item.inspection.variant,
            source_name=source_name[:255],
            wrappers=",".join(item.payload.wrappers),
            virtual_size=item.virtual_size,
            actual_size=item.file.stat().st_blocks * 512,
            sha256=digest,
            source_sha256=received.sha256,
            path=f"custom/{name}",
            origin="custom",
            created_at=datetime.now(UTC),
        )

    def _converting(self, job: ImportJob, percent: float) -> None:
        job.advance(percent)
        if percent >= 10:
            self._fault("during_convert")


def sha256_file(path: Path, chunk: int = 4 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "no details")
