"""Reading a stopped (or running) server's data directory the way an auditor would."""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["assert_consistent", "catalog_paths"]


def catalog_paths(data_dir: Path) -> set[str]:
    """The ``path`` of every catalog row (relative to DATA/images)."""
    db = data_dir / "catalog.sqlite3"
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT path FROM images")}


def assert_consistent(data_dir: Path) -> None:
    """Every custom image file has its row and every row its file; staging is empty."""
    images = data_dir / "images"
    files = {f"custom/{p.name}" for p in (images / "custom").iterdir()}
    files |= {p.name for p in images.iterdir() if p.is_file() and not p.name.startswith(".")}
    rows = catalog_paths(data_dir)
    assert rows == files, f"rows without files: {rows - files}; files without rows: {files - rows}"
    leftovers = list((data_dir / "staging").iterdir())
    assert leftovers == [], f"staging not empty: {leftovers}"
