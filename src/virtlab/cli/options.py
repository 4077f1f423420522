"""What every client command shares: the server URL and --json options, the two consoles."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

from virtlab.cli.client import ApiError, Client

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


def call(url: str | None, method: str, path: str, **kwargs: Any) -> Any:
    """One request to the server; an error is printed as the server worded it, and the command
    ends with exit status 1."""
    try:
        return Client(url, timeout=None).request(method, path, **kwargs)  # type: ignore[arg-type]
    except ApiError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from exc
