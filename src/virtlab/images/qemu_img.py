"""Every call virtlab makes to ``qemu-img``: always with ``-f FORMAT``, always under limits.

The input format is forced on every call so that qemu never probes a hostile file, and the JSON
output is parsed into typed records. This module states facts; policy lives in the importer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virtlab._util.proc import Completed, Limits, run, stream_lines
from virtlab.errors import InsufficientStorage, ToolFailure, VirtlabError

__all__ = ["CheckResult", "ImageInfo", "QemuImg"]

_PROGRESS = re.compile(r"\(\s*([0-9.]+)/100%\)")
_ENOSPC = ("No space left on device", "ENOSPC")


@dataclass(frozen=True)
class ImageInfo:
    """What ``qemu-img info`` says of one file."""

    format: str
    virtual_size: int
    actual_size: int
    backing_filename: str | None
    encrypted: bool
    dirty: bool
    data_file: str | None
    extent_files: tuple[str, ...]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ImageInfo:
        specific = (doc.get("format-specific") or {}).get("data") or {}
        extents = tuple(str(e.get("filename", "")) for e in specific.get("extents") or [])
        return cls(
            format=str(doc.get("format", "")),
            virtual_size=int(doc.get("virtual-size", 0)),
            actual_size=int(doc.get("actual-size", 0)),
            backing_filename=doc.get("backing-filename") or doc.get("full-backing-filename"),
            encrypted=bool(doc.get("encrypted", False)),
            dirty=bool(doc.get("dirty-flag", False)),
            data_file=specific.get("data-file"),
            extent_files=extents,
            raw=doc,
        )


@dataclass(frozen=True)
class CheckResult:
    """What ``qemu-img check`` found. ``clean`` means no corruption, no leak, no error."""

    supported: bool
    corruptions: int = 0
    leaks: int = 0
    check_errors: int = 0
    message: str = ""

    @property
    def clean(self) -> bool:
        return self.supported and not (self.corruptions or self.leaks or self.check_errors)

    @property
    def damaged(self) -> bool:
        """Data may be wrong (leaked clusters only waste space and are not damage)."""
        return bool(self.corruptions or self.check_errors)


class QemuImg:
    """A thin, typed front to the ``qemu-img`` binary."""

    def __init__(
        self,
        *,
        binary: str = "qemu-img",
        info_limits: Limits | None = None,
        work_limits: Limits | None = None,
    ) -> None:
        self.binary = binary
        self.info_limits = info_limits or Limits(cpu_seconds=30, address_space=1 << 30)
        self.work_limits = work_limits or Limits(address_space=4 << 30)

    def version(self) -> str:
        done = run([self.binary, "--version"])
        first = done.stdout.splitlines()[0] if done.stdout else ""
        match = re.search(r"version ([0-9][0-9.]*)", first)
        return match.group(1) if match else first

    def info(self, path: Path, fmt: str) -> ImageInfo:
        done = run(
            [self.binary, "info", "--output=json", "-f", fmt, str(path)],
            limits=self.info_limits,
        )
        if done.returncode != 0:
            raise _failure(f"qemu-img could not read {path.name} as {fmt}", done)
        try:
            return ImageInfo.from_json(json.loads(done.stdout))
        except (ValueError, TypeError, AttributeError) as exc:
            raise ToolFailure(
                f"qemu-img info printed output virtlab cannot parse for {path.name}",
                done.argv,
                done.returncode,
                done.stdout[-2000:],
            ) from exc

    def check(self, path: Path, fmt: str) -> CheckResult:
        done = run(
            [self.binary, "check", "--output=json", "-f", fmt, str(path)],
            limits=self.work_limits,
        )
        if done.returncode == 63:  # the format has no consistency checks
            return CheckResult(supported=False, message=done.stderr_tail)
        try:
            doc = json.loads(done.stdout) if done.stdout.strip() else {}
        except ValueError:
            doc = {}
        if done.returncode == 1 and not doc:
            # "Check not completed because of an error": the image could not even be read.
            return CheckResult(supported=True, check_errors=1, message=done.stderr_tail)
        return CheckResult(
            supported=True,
            corruptions=int(doc.get("corruptions", 0)),
            leaks=int(doc.get("leaks", 0)),
            check_errors=int(doc.get("check-errors", 0)) + (1 if done.returncode == 1 else 0),
            message=done.stderr_tail,
        )

    def convert(
        self,
        src: Path,
        src_fmt: str,
        dst: Path,
        on_progress: Callable[[float], None] | None = None,
        *,
        label: str | None = None,
    ) -> None:
        """Convert ``src`` to a new qcow2 ``dst``. The result is not yet flushed to disk."""
        argv = [
            self.binary,
            "convert",
            "-p",
            "-f",
            src_fmt,
            "-O",
            "qcow2",
            "-o",
            "compat=1.1",
            str(src),
            str(dst),
        ]

        def parse(line: str) -> None:
            match = _PROGRESS.search(line)
            if match and on_progress is not None:
                on_progress(float(match.group(1)))

        done = stream_lines(argv, parse, limits=self.work_limits)
        if done.returncode != 0:
            raise _failure(f"qemu-img could not convert {label or src.name} from {src_fmt}", done)

    def compare(self, a: Path, a_fmt: str, b: Path, b_fmt: str) -> bool:
        """True when the guest-visible contents are the same."""
        done = run(
            [self.binary, "compare", "-q", "-f", a_fmt, "-F", b_fmt, str(a), str(b)],
            limits=self.work_limits,
        )
        if done.returncode in (0, 1):
            return done.returncode == 0
        raise _failure(f"qemu-img could not compare {a.name} with {b.name}", done)

    def create_blank(self, dst: Path, size: int) -> None:
        """An empty qcow2 disk of ``size`` bytes (for nodes that boot from a CD-ROM)."""
        done = run([self.binary, "create", "-q", "-f", "qcow2", str(dst), str(size)])
        if done.returncode != 0:
            raise _failure(f"qemu-img could not create the disk {dst.name}", done)

    def create_overlay(self, base: Path, dst: Path) -> None:
        """A qcow2 overlay over a catalog base image (the base is ours, never user data)."""
        done = run(
            [
                self.binary,
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                str(base),
                "-F",
                "qcow2",
                str(dst),
            ]
        )
        if done.returncode != 0:
            raise _failure(f"qemu-img could not create the overlay {dst.name}", done)

    # -- internal snapshots (node checkpoints) of disks no QEMU has open ----------------------

    def snapshots(self, path: Path) -> dict[str, int]:
        """The internal snapshots of a qcow2 file: tag -> bytes of machine state."""
        found = self.info(path, "qcow2").raw.get("snapshots") or []
        return {str(s["name"]): int(s.get("vm-state-size", 0)) for s in found}

    def delete_snapshot(self, path: Path, tag: str) -> None:
        """Delete one internal snapshot, the file opened alone: ``qemu-img snapshot`` has no
        -f, so the format is forced through a ``json:`` filename, which also opens no backing
        file (``"backing": null``; an archive's copy names a placeholder that does not exist).
        """
        opts = {"driver": "qcow2", "file": {"driver": "file", "filename": str(path)},
                "backing": None}  # fmt: skip
        done = run(
            [self.binary, "snapshot", "-q", "-d", tag, f"json:{json.dumps(opts)}"],
            limits=self.work_limits,
        )
        if done.returncode != 0:
            raise _failure(f"qemu-img could not delete checkpoint {tag} from {path.name}", done)


def _failure(what: str, done: Completed) -> VirtlabError:
    """The error to raise for a failed call: a full disk is told apart from other failures."""
    tail = done.stderr_tail
    if any(marker in tail for marker in _ENOSPC):
        return InsufficientStorage(
            f"{what}: the data directory's disk is full ({tail.splitlines()[-1] if tail else ''}); "
            "free some space and try again"
        )
    return ToolFailure(
        f"{what}: {tail or f'exit code {done.returncode}'}", done.argv, done.returncode, tail
    )
