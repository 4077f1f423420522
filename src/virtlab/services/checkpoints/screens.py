"""A node's serial console as it was at a checkpoint: its scrollback, kept beside the snapshot.

The display (VGA memory) is inside the snapshot. What the serial console had printed lives in
the console hub's scrollback file (``serial.scrollback`` in the node's directory), which goes
on growing after the checkpoint. So a checkpoint copies that file, while the guest is paused,
to ``checkpoints/TAG.scrollback``; a resume puts the copy back before the console hub opens,
and a console opened after a resume shows what it showed at the checkpoint, not what came
after. A failed resume puts the newer scrollback back.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["forget", "keep", "put_back", "undo"]

SCROLLBACK = "serial.scrollback"  # virtlab.services.consoles names it so


def _copy(node_dir: Path, tag: str) -> Path:
    return node_dir / "checkpoints" / f"{tag}.scrollback"


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def keep(node_dir: Path, tag: str) -> None:
    """Copy the console's scrollback as it is now, for checkpoint ``tag``."""
    try:
        data = (node_dir / SCROLLBACK).read_bytes()
    except FileNotFoundError:
        data = b""
    _copy(node_dir, tag).parent.mkdir(mode=0o700, exist_ok=True)
    _write(_copy(node_dir, tag), data)


def put_back(node_dir: Path, tag: str) -> bytes | None:
    """Make checkpoint ``tag``'s scrollback the console's; return what it replaced (for
    :func:`undo`). None when the checkpoint has no copy (one imported from an archive)."""
    try:
        saved = _copy(node_dir, tag).read_bytes()
    except FileNotFoundError:
        return None
    try:
        current = (node_dir / SCROLLBACK).read_bytes()
    except FileNotFoundError:
        current = b""
    _write(node_dir / SCROLLBACK, saved)
    return current


def undo(node_dir: Path, replaced: bytes | None) -> None:
    if replaced is not None:
        _write(node_dir / SCROLLBACK, replaced)


def forget(node_dir: Path, tag: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        _copy(node_dir, tag).unlink()
