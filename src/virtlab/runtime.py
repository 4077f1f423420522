"""The one composition root: builds every piece from ``Settings`` and hands them out.

No module keeps global state; the API gets its services from the ``Runtime`` stored on the app,
through the dependencies in ``virtlab.api.deps``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from virtlab._util.proc import Limits
from virtlab.catalog import Catalog
from virtlab.images.importer import Importer, ImportLimits
from virtlab.images.progress import ImportJobs
from virtlab.images.qemu_img import QemuImg
from virtlab.images.store import ImageStore
from virtlab.services.image_scan import BaseScanner
from virtlab.services.images import ImageService
from virtlab.settings import Settings

__all__ = ["Runtime"]

log = logging.getLogger("virtlab")


@dataclass
class Runtime:
    settings: Settings
    catalog: Catalog
    images: ImageService

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        catalog = Catalog(settings.resolved_database_url)
        store = ImageStore(settings.images_dir, settings.staging_dir)
        qemu_img = QemuImg(
            info_limits=Limits(settings.qemu_img_cpu_seconds, settings.qemu_img_address_space),
            work_limits=Limits(address_space=settings.convert_address_space),
        )
        importer = Importer(
            catalog=catalog,
            store=store,
            qemu_img=qemu_img,
            limits=ImportLimits(settings.max_expanded_bytes, settings.max_virtual_size),
            fault_point=settings.fault_point,
        )
        images = ImageService(
            catalog=catalog,
            store=store,
            importer=importer,
            jobs=ImportJobs(),
            scanner=BaseScanner(catalog=catalog, store=store, importer=importer),
            max_upload_bytes=settings.max_upload_bytes,
        )
        return cls(settings=settings, catalog=catalog, images=images)

    def start(self) -> None:
        """Prepare the data directory and catalog; sweep what a crash left; scan base images."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.images.store.ensure_layout()
        self.catalog.migrate()
        for gone in self.images.sweep():
            log.warning("start-up sweep removed %s", gone)
        report = self.images.scan()
        for name in report.added:
            log.info("registered base image %s", name)
        for name, reason in report.refused.items():
            log.warning("base image %s refused: %s", name, reason)
        for name in report.missing:
            log.warning("image %s: its file is missing (virtlab image verify --fix)", name)

    def stop(self) -> None:
        self.catalog.dispose()
