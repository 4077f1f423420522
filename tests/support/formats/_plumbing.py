"""Constants, the case records and the helpers every maker uses."""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from virtlab.errors import ImageRejected
from virtlab.images.formats import ImageFormat

MiB = 1024 * 1024


DISK_SIZE = 4 * MiB  # virtual size of every accepted disk image


CAP = 2 * 1024**4  # the max_virtual_size REFUSED expectations assume (2 TiB)


PATTERN = random.Random(0x5EED).randbytes(64 * 1024)  # incompressible, not text


PATTERN_OFFSETS = (1 * MiB, 3 * MiB - 4096)  # where make_pattern_raw writes PATTERN


SECRET = "virtlab-test-secret"


Maker = Callable[..., Path]  # (directory: Path, name: str | None = None) -> Path


class Accepted(NamedTuple):
    maker: Maker
    format: ImageFormat
    variant: str


class Refused(NamedTuple):
    maker: Maker
    error: type[ImageRejected]
    needle: str


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise RuntimeError(f"{name} is not installed (apt-get install the package providing it)")
    return found


def _run(*argv: str, cwd: Path, stdin: bytes | None = None) -> None:
    try:
        subprocess.run(
            [_tool(argv[0]), *argv[1:]], cwd=cwd, input=stdin, check=True, capture_output=True
        )
    except subprocess.CalledProcessError as exc:
        stderr = exc.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"{' '.join(argv)} failed ({exc.returncode}): {stderr}") from exc


def _qemu_img(directory: Path, *args: str) -> None:
    _run("qemu-img", *args, cwd=directory)


def _patch(path: Path, offset: int, data: bytes) -> Path:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)
    return path


def _read(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


def _target(directory: Path, name: str | None, default: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory / (name or default)


def _converted(directory: Path, name: str | None, default: str, fmt: str, *opts: str) -> Path:
    """``qemu-img convert`` of the pattern disk to ``fmt`` (with ``opts``, e.g. ``-c``)."""
    out = _target(directory, name, default)
    source = make_pattern_raw(directory, f".{out.name}.source.raw")
    _qemu_img(directory, "convert", "-f", "raw", "-O", fmt, *opts, source.name, out.name)
    source.unlink()
    return out


def _created(directory: Path, name: str | None, default: str, fmt: str, *opts: str) -> Path:
    """``qemu-img create`` (empty, instant); ``opts`` end with the size."""
    out = _target(directory, name, default)
    _qemu_img(directory, "create", "-q", "-f", fmt, *opts[:-1], out.name, opts[-1])
    return out


def make_pattern_raw(directory: Path, name: str | None = None, size: int = DISK_SIZE) -> Path:
    """A sparse raw disk of ``size`` with PATTERN at PATTERN_OFFSETS (sector 0 stays zero)."""
    out = _target(directory, name, "pattern.raw")
    with out.open("wb") as f:
        f.truncate(size)
        for offset in PATTERN_OFFSETS:
            f.seek(offset)
            f.write(PATTERN)
    return out
