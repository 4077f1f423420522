"""Image use cases: import an upload, list, show, delete, rescan the base directory, verify.

The only layer that combines the catalog, the store, the importer and qemu-img. Heavy work runs
in worker threads so the event loop keeps answering while an import converts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from virtlab.catalog import Catalog, ImageRecord, ImageRepository
from virtlab.errors import Conflict, ImageInUse, NotFound, VirtlabError
from virtlab.images.importer import Importer
from virtlab.images.progress import ImportJob, ImportJobs
from virtlab.images.receive import receive
from virtlab.images.store import ImageStore
from virtlab.names import UPLOAD
from virtlab.services.image_scan import BaseScanner, ScanReport, VerifyReport
from virtlab.services.limits import SYSTEM, ImportSlots, Requester

__all__ = ["ImageService", "ScanReport", "VerifyReport"]

UsersOf = Callable[[str], list[str]]


@dataclass
class ImageService:
    catalog: Catalog
    store: ImageStore
    importer: Importer
    jobs: ImportJobs
    scanner: BaseScanner
    max_upload_bytes: int
    users_of: UsersOf = lambda _name: []  # replaced once nodes exist
    slots: ImportSlots = field(default_factory=lambda: ImportSlots(4, 2))  # imports in flight

    async def import_upload(
        self,
        chunks: AsyncIterator[bytes],
        source_name: str,
        *,
        job_id: str | None = None,
        expected_size: int | None = None,
        who: Requester = SYSTEM,
        held: bool = False,
    ) -> list[ImageRecord]:
        """Stage, unwrap, inspect, convert, verify and register one upload. It takes an
        import slot of ``who``'s first (refused at once when none is free), unless the caller
        ``held`` one already (a lab archive's images)."""
        UPLOAD.check(source_name)
        with contextlib.nullcontext() if held else self.slots.take(who):
            return await self._import(chunks, source_name, job_id, expected_size)

    async def _import(
        self, chunks: AsyncIterator[bytes], source_name: str, job_id: str | None,
        expected_size: int | None,
    ) -> list[ImageRecord]:  # fmt: skip
        try:
            job = self.jobs.start(source_name, job_id)
        except KeyError as exc:
            raise Conflict(f"an import with id {job_id} already exists; use a new id") from exc
        staging = self.store.new_staging()
        try:
            received = await receive(
                chunks,
                staging.upload,
                label=source_name,
                max_bytes=self.max_upload_bytes,
                job=job,
                expected_size=expected_size,
            )
            records = await asyncio.to_thread(
                self.importer.run,
                staging,
                received,
                source_name=source_name,
                job=job,
            )
        except VirtlabError as exc:
            job.fail(str(exc))
            raise
        except BaseException as exc:
            job.fail(f"the import of {source_name} stopped: {type(exc).__name__}")
            raise
        finally:
            self.store.discard(staging)
        job.succeed([r.name for r in records])
        return records

    def job(self, job_id: str) -> ImportJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no import with id {job_id} (finished imports are kept for a while)")
        return job

    def list(self) -> list[ImageRecord]:
        with self.catalog.session() as session:
            return ImageRepository(session).list()

    def get(self, name: str) -> ImageRecord:
        with self.catalog.session() as session:
            record = ImageRepository(session).get(name)
        if record is None:
            raise NotFound(f"no image named {name!r}; `virtlab image list` shows the catalog")
        return record

    def delete(self, name: str) -> ImageRecord:
        record = self.get(name)
        users = self.users_of(name)
        if users:
            raise ImageInUse(
                f"image {name} is used by {', '.join(sorted(users))}; delete those first",
                users,
            )
        aside = self.store.begin_removal(record.path)
        try:
            with self.catalog.session() as session:
                ImageRepository(session).remove(name)
        except BaseException:
            self.store.restore(aside, record.path)
            raise
        self.store.discard(aside)
        return record

    def sweep(self) -> list[str]:
        """Remove stale staging at start-up, undoing half-done publishes and removals."""
        with self.catalog.session() as session:
            paths = {r.path for r in ImageRepository(session).list()}
        return self.store.sweep(lambda relative: relative in paths)

    def scan(self) -> ScanReport:
        return self.scanner.scan()

    def verify(self, *, fix: bool = False) -> VerifyReport:
        return self.scanner.verify(fix=fix)
