"""The base directory and the catalog kept in agreement: rescan, verify, and repair with ``fix``.

Files an administrator drops into ``DATA/images`` are registered by a scan after the same
inspection and second opinion as an upload (but no conversion: they are recorded as what their
content is, so a VMDK named ``router.qcow2`` is recorded as ``vmdk`` and ``verify --fix`` converts
it). Verification checks every image: the file exists, has the recorded format and checksum,
and ``qemu-img check`` is clean.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from virtlab.catalog import Catalog, ImageRecord, ImageRepository
from virtlab.errors import ImageRejected, VirtlabError
from virtlab.images.formats import ImageFormat
from virtlab.images.importer import Importer, sha256_file
from virtlab.images.inspect import inspect_file
from virtlab.images.store import ImageStore
from virtlab.names import IMAGE

__all__ = ["BaseScanner", "ImageCheck", "ScanReport", "VerifyReport"]


@dataclass
class ScanReport:
    added: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # file -> reason
    missing: list[str] = field(default_factory=list)  # image names whose file is gone


@dataclass
class ImageCheck:
    name: str
    problems: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)  # what --fix did
    resolved: bool = False  # --fix dealt with every problem

    @property
    def ok(self) -> bool:
        return not self.problems or self.resolved


@dataclass
class VerifyReport:
    scan: ScanReport
    images: list[ImageCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.scan.refused and all(i.ok for i in self.images)


class BaseScanner:
    def __init__(self, *, catalog: Catalog, store: ImageStore, importer: Importer) -> None:
        self.catalog = catalog
        self.store = store
        self.importer = importer
        self._lock = threading.Lock()  # one scan or verify at a time

    def _records(self) -> list[ImageRecord]:
        with self.catalog.session() as session:
            return ImageRepository(session).list()

    def scan(self) -> ScanReport:
        with self._lock:
            return self._scan()

    def _scan(self) -> ScanReport:
        report = ScanReport()
        records = self._records()
        known_paths = {r.path for r in records}
        known_names = [r.name for r in records]
        for entry in sorted(self.store.images_dir.iterdir()):
            if entry.name.startswith(".") or not entry.is_file() or entry.is_symlink():
                continue
            if entry.name in known_paths:
                continue
            why = IMAGE.problem(entry.name)
            if why:
                report.refused[printable(entry.name)] = f"{why}; rename the file"
                continue
            other = IMAGE.clash(entry.name, known_names)
            if other is not None:
                report.refused[entry.name] = (
                    f"{entry.name}: an image of that name ({other}) is already in the catalog "
                    "(names that differ only in case collide); rename the file"
                )
                continue
            try:
                record = self._base_record(entry)
            except ImageRejected as exc:
                report.refused[entry.name] = str(exc)
                continue
            with self.catalog.session() as session:
                ImageRepository(session).add(record)
            report.added.append(record.name)
            known_names.append(record.name)
        report.missing = [r.name for r in records if not self.store.absolute(r.path).exists()]
        return report

    def _base_record(self, path: Path) -> ImageRecord:
        inspection = inspect_file(
            path, display_name=path.name, max_virtual_size=self.importer.limits.max_virtual_size
        )
        self.importer.examine(path, path.name, inspection)
        fmt = inspection.format
        return ImageRecord(
            name=path.name, kind=fmt.kind.value, format=fmt.value, source_format=fmt.value,
            source_variant=inspection.variant, source_name=path.name, wrappers="",
            virtual_size=inspection.virtual_size, actual_size=_actual(path),
            sha256=sha256_file(path), source_sha256="", path=path.name, origin="base",
            created_at=datetime.now(UTC),
        )  # fmt: skip

    def verify(self, *, fix: bool = False) -> VerifyReport:
        with self._lock:
            report = VerifyReport(scan=self._scan())
            for record in self._records():
                report.images.append(self._verify_one(record, fix))
            return report

    def _verify_one(self, record: ImageRecord, fix: bool) -> ImageCheck:
        result = ImageCheck(record.name)
        path = self.store.absolute(record.path)
        if not path.exists():
            result.problems.append(f"its file {record.path} is missing")
            if fix:
                with self.catalog.session() as session:
                    ImageRepository(session).remove(record.name)
                result.fixed.append("removed it from the catalog")
                result.resolved = True
            return result
        try:
            inspection = inspect_file(
                path,
                display_name=record.name,
                max_virtual_size=self.importer.limits.max_virtual_size,
            )
            self.importer.examine(path, record.name, inspection)
        except VirtlabError as exc:
            result.problems.append(str(exc))
            return result  # nothing safe to fix automatically
        detected = inspection.format
        if detected.value != record.format:
            result.problems.append(
                f"the catalog says {record.format} but the content is {detected.value}"
            )
        if detected.kind.value == "disk" and detected is not ImageFormat.QCOW2:
            result.problems.append(
                f"{record.name} is a {detected.value} image, not qcow2: nodes need qcow2 "
                "(`virtlab image verify --fix` converts it)"
            )
            if fix:
                self._convert_in_place(record, path, inspection)
                result.fixed.append("converted it to qcow2 in place")
                result.resolved = True
                return result
        digest = sha256_file(path)
        if digest != record.sha256:
            result.problems.append("its sha256 differs from the one recorded at import")
        if fix and result.problems and record.origin == "base":
            # A base file that passed every check above is taken as it now is.
            self._update(
                record.name,
                sha256=digest,
                actual_size=_actual(path),
                format=detected.value,
                virtual_size=inspection.virtual_size,
            )
            result.fixed.append("recorded the file as it now is (it passed every check)")
            result.resolved = True
        return result

    def _convert_in_place(self, record: ImageRecord, path: Path, inspection) -> None:  # type: ignore[no-untyped-def]
        staging = self.store.new_staging()
        try:
            out = staging.file("converted.qcow2")
            self.importer.qemu_img.convert(path, inspection.format.qemu_driver, out)
            size = self.importer.verify_conversion(path, inspection, out, record.name)
            fd = os.open(out, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(out, path)  # one step: the name now holds a real qcow2
            self._update(
                record.name,
                format="qcow2",
                source_format=inspection.format.value,
                source_variant=inspection.variant,
                virtual_size=size,
                actual_size=_actual(path),
                sha256=sha256_file(path),
            )
        finally:
            self.store.discard(staging)

    def _update(self, name: str, **fields: object) -> None:
        with self.catalog.session() as session:
            ImageRepository(session).update(name, **fields)


def _actual(path: Path) -> int:
    return path.stat().st_blocks * 512


def printable(name: str) -> str:
    """A file name as a report can carry it: bytes that are not UTF-8 and control characters
    escaped (``\\xff``, ``\\n``)."""
    raw = os.fsencode(name).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in raw)
