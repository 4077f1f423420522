"""Sizes as people read them."""

from __future__ import annotations

__all__ = ["human_size"]


def human_size(n: int | float) -> str:
    """``4194304`` → ``4.0 MiB``; binary units, one decimal."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "PiB":
            break
        value /= 1024
    else:
        unit = "PiB"
    return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
