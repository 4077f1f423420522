"""Image files on disk: the layout, per-upload staging directories, atomic publishing, sweeping.

Layout under the data directory::

    DATA/
      catalog.sqlite3          the catalog (unless --database-url points elsewhere)
      images/                  base images: scanned at start-up and on demand
        custom/                uploads, named <stem>_<unix-ms>.<qcow2|iso>
      staging/<upload-id>/     one directory per upload in progress; swept at start-up

Publishing is crash-safe together with the catalog: before any file is moved into ``images/``,
its staging directory records the moves in ``publish.json``; the rows are committed after. A
staging directory still there at start-up is stale: if it recorded a move whose catalog row was
never committed, the moved file is deleted too; if it holds a file set aside for a deletion that
never committed, the file is put back. So there is never a row without its file nor a file
without its row.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from virtlab.images.writeback import fsync_dir, fsync_file

__all__ = ["ImageStore", "Staging", "safe_stem"]

_INTENT = "publish.json"
_KNOWN_SUFFIXES = {
    ".gz", ".gzip", ".xz", ".bz2", ".zst", ".zstd", ".tar", ".ova", ".ovf", ".qcow2", ".qcow",
    ".img", ".raw", ".bin", ".vmdk", ".vdi", ".vhdx", ".vhd", ".vpc", ".iso", ".udf",
}  # fmt: skip
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def safe_stem(filename: str) -> str:
    """A file-system- and URL-safe stem of an upload's name: ``router.vmdk.gz`` → ``router``."""
    base = re.split(r"[\\/]", filename)[-1]
    stem = base
    while True:
        root, ext = os.path.splitext(stem)
        if ext.lower() in _KNOWN_SUFFIXES and root:
            stem = root
        else:
            break
    # An image name starts and ends with a letter or digit (virtlab.names.IMAGE).
    stem = _UNSAFE.sub("_", stem).strip("._+-")[:64].rstrip("._+-")
    return stem or "image"


@dataclass
class Staging:
    """One upload's private working directory."""

    path: Path

    @property
    def upload(self) -> Path:
        return self.path / "upload"

    def file(self, name: str) -> Path:
        return self.path / name


class ImageStore:
    """Owns the files under ``images/`` and ``staging/``; never touches catalog rows."""

    def __init__(self, images_dir: Path, staging_dir: Path) -> None:
        self.images_dir = images_dir
        self.custom_dir = images_dir / "custom"
        self.staging_dir = staging_dir
        # Finished staging directories are renamed here (instant), then deleted in the
        # background: deleting a multi-GiB upload takes long on some file systems.
        self.trash_dir = staging_dir.parent / ".trash"

    def ensure_layout(self) -> None:
        for path in (self.images_dir, self.custom_dir, self.staging_dir):
            path.mkdir(parents=True, exist_ok=True)

    def new_staging(self) -> Staging:
        path = self.staging_dir / uuid.uuid4().hex
        path.mkdir(parents=True)
        return Staging(path)

    def discard(self, staging: Staging) -> None:
        """Take ``staging`` away at once; its files are deleted in the background."""
        if not staging.path.exists():
            return
        self.trash_dir.mkdir(exist_ok=True)
        trashed = self.trash_dir / staging.path.name
        try:
            os.rename(staging.path, trashed)
        except OSError:
            shutil.rmtree(staging.path, ignore_errors=True)
            return
        threading.Thread(
            target=shutil.rmtree, args=(trashed,), kwargs={"ignore_errors": True},
            name="virtlab-discard", daemon=True,
        ).start()  # fmt: skip

    def empty_trash(self) -> None:
        shutil.rmtree(self.trash_dir, ignore_errors=True)

    def custom_name(self, stem: str, suffix: str, taken: Collection[str] = ()) -> str:
        """``<stem>_<unix-ms><suffix>``, unique among the files in ``custom/`` and not one of
        ``taken`` (the catalog's names, case-folded: names differing only in case collide)."""
        ms = int(time.time() * 1000)
        while (self.custom_dir / f"{stem}_{ms}{suffix}").exists() or (
            f"{stem}_{ms}{suffix}".casefold() in taken
        ):
            ms += 1
        return f"{stem}_{ms}{suffix}"

    def absolute(self, relative: str) -> Path:
        return self.images_dir / relative

    def record_intent(self, staging: Staging, relatives: list[str]) -> None:
        """Durably note, before any of them moves, which files this staging will publish."""
        intent = staging.file(_INTENT)
        intent.write_text(json.dumps({"targets": relatives}))
        fsync_file(intent)
        fsync_dir(staging.path)

    def move_into_place(self, source: Path, relative: str) -> Path:
        """Rename a finished file to ``images/relative`` (after :meth:`record_intent`)."""
        target = self.absolute(relative)
        if target.exists():
            raise FileExistsError(f"{target} already exists")
        fsync_file(source)
        os.rename(source, target)
        fsync_dir(target.parent)
        return target

    def begin_removal(self, relative: str) -> Staging:
        """Move ``images/relative`` aside into a new staging directory, noting where it was.

        Until the caller commits the row's deletion and discards the staging, a crash leaves the
        file restorable: the start-up sweep puts it back if the row is still there.
        """
        staging = self.new_staging()
        intent = staging.file(_INTENT)
        intent.write_text(json.dumps({"removing": relative}))
        fsync_file(intent)
        fsync_dir(staging.path)
        source = self.absolute(relative)
        if source.exists():
            os.rename(source, staging.file("removed"))
            fsync_dir(source.parent)
        return staging

    def restore(self, staging: Staging, relative: str) -> None:
        """Undo :meth:`begin_removal`."""
        aside = staging.file("removed")
        if aside.exists():
            os.rename(aside, self.absolute(relative))
        self.discard(staging)

    def unpublish(self, relative: str) -> None:
        self.absolute(relative).unlink(missing_ok=True)

    def sweep(self, has_row_for: Callable[[str], bool]) -> list[str]:
        """Remove stale staging directories, undoing half-published moves. Returns what went."""
        removed = []
        self.empty_trash()
        if not self.staging_dir.exists():
            return removed
        for entry in sorted(self.staging_dir.iterdir()):
            intent = entry / _INTENT
            if intent.is_file():
                try:
                    doc = json.loads(intent.read_text())
                except ValueError:
                    doc = {}  # the intent itself was cut short: nothing was moved yet
                removing = doc.get("removing")
                if removing and has_row_for(removing):  # the deletion never committed
                    self.restore(Staging(entry), removing)
                    removed.append(f"staging/{entry.name} (restored images/{removing})")
                    continue
                for relative in doc.get("targets", []):
                    if not has_row_for(relative) and self.absolute(relative).exists():
                        self.unpublish(relative)
                        removed.append(f"images/{relative}")
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(f"staging/{entry.name}")
        return removed
