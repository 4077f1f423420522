"""Small qemu-img conveniences for tests: make a patterned disk, convert it, compare contents."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

__all__ = ["compare", "convert", "info", "patterned_raw"]

MiB = 1 << 20


def patterned_raw(path: Path, size_mib: int = 16, *, data_mib: int = 2, seed: int = 1) -> Path:
    """A sparse raw disk with ``data_mib`` of random data spread at a few offsets."""
    rng = __import__("random").Random(seed)
    with path.open("wb") as f:
        f.truncate(size_mib * MiB)
        step = max(1, size_mib // max(1, data_mib))
        for i in range(data_mib):
            f.seek(i * step * MiB)
            f.write(rng.randbytes(MiB))
    return path


def convert(src: Path, dst: Path, fmt: str, *options: str, src_fmt: str = "raw") -> Path:
    argv = ["qemu-img", "convert", "-f", src_fmt, "-O", fmt]
    for option in options:
        argv += ["-o", option]
    subprocess.run([*argv, str(src), str(dst)], check=True, capture_output=True)
    return dst


def info(path: Path) -> dict:
    """What qemu-img makes of a file when left to probe it (tests only: never on user data)."""
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def compare(a: Path, a_fmt: str, b: Path, b_fmt: str) -> bool:
    done = subprocess.run(
        ["qemu-img", "compare", "-q", "-f", a_fmt, "-F", b_fmt, str(a), str(b)],
        capture_output=True,
        env={**os.environ, "LC_ALL": "C"},
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode == 0
