"""A lab deploy's intent: the file it is making, recorded before anything is made.

``DATA/deploys/<lab>.yaml`` holds the canonical export of the lab being deployed, written and
fsynced before the lab's row exists, removed once the deploy is recorded (or undone). A file
found later means the server died during that deploy: the lab is as far as the deploy got,
and the same topology again finishes it (``LabService.deploy``) rather than being refused as
a different lab.
"""

from __future__ import annotations

import os
from pathlib import Path

from virtlab.topology import ResolvedLab, export_yaml

__all__ = ["DeployIntents"]


class DeployIntents:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}.yaml"  # lab names are checked: no separators

    def record(self, wanted: ResolvedLab) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(wanted.name)
        part = path.with_name(f".{path.name}.part")
        with part.open("w", encoding="utf-8") as f:
            f.write(export_yaml(wanted))
            f.flush()
            os.fsync(f.fileno())
        part.replace(path)
        folder = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def matches(self, wanted: ResolvedLab) -> bool:
        """Whether a deploy of exactly ``wanted`` was cut short."""
        try:
            return self._path(wanted.name).read_text(encoding="utf-8") == export_yaml(wanted)
        except FileNotFoundError:
            return False

    def forget(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.yaml"))
