"""What every client command shares: the server URL and --json options, the two consoles."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

__all__ = ["JsonOpt", "UrlOpt", "err", "out"]

out = Console()
err = Console(stderr=True, soft_wrap=True)  # messages stay whole lines, easy to copy

UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url", envvar="VIRTLAB_URL", help="Server URL [default: http://127.0.0.1:8080]."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
