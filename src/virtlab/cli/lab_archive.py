"""``virtlab lab archive`` and ``virtlab lab import``: a lab in one file, and back.

Registered on the ``lab`` command group by :func:`register`; both stream the file (no copy of it
in memory) and show progress on stderr.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import httpx
import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from virtlab._util.units import human_size
from virtlab.cli.client import ApiError, Client, raise_for
from virtlab.cli.options import JsonOpt, UrlOpt, err, out

__all__ = ["lab_archive", "lab_import", "register"]

CHUNK = 1 << 20


def _progress(show: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=err, disable=not show, transient=True,
    )  # fmt: skip


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc}", highlight=False)
    return typer.Exit(1)


def lab_archive(
    name: str,
    output: Annotated[Path, typer.Option("--output", "-o", help="The tar file to write.")],
    images: Annotated[
        bool, typer.Option("--images", help="Include the base images (by sha256).")
    ] = False,
    url: UrlOpt = None,
) -> None:
    """Save a lab and its node disks (with --images, its base images too) to one tar file.

    The lab's nodes must be stopped; `virtlab lab import` makes the file into the same lab on
    another server."""
    client = Client(url, timeout=None)  # type: ignore[arg-type]
    part = output.with_name(f".{output.name}.part")
    path = f"/api/labs/{quote(name, safe='')}/archive"
    try:
        with client.http.stream("GET", path, params={"images": str(images).lower()}) as response:
            if not response.is_success:
                response.read()
                raise_for(response)
            total = int(response.headers.get("content-length") or 0) or None
            with _progress(err.is_terminal) as progress, part.open("wb") as f:
                task = progress.add_task(f"archive {name}", total=total)
                for block in response.iter_bytes(CHUNK):
                    f.write(block)
                    progress.advance(task, len(block))
        part.replace(output)
    except (ApiError, httpx.HTTPError, OSError) as exc:
        part.unlink(missing_ok=True)
        raise _fail(exc) from exc
    err.print(f"wrote {output} ({human_size(output.stat().st_size)})", highlight=False)


def lab_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    name: Annotated[str | None, typer.Option(help="Name the lab (default: its own).")] = None,
    checkpoints: Annotated[
        bool,
        typer.Option(
            "--checkpoints/--no-checkpoints",
            help="Keep the nodes' checkpoints (QEMU loads their saved state as it is: drop "
            "them from archives you do not trust that far).",
        ),
    ] = True,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a lab from a lab archive, its nodes stopped.

    Base images are found here by sha256, or imported from the archive when it holds them.
    The nodes' checkpoints come along unless --no-checkpoints."""
    client = Client(url, timeout=None)  # type: ignore[arg-type]
    total = file.stat().st_size
    with _progress(err.is_terminal and not as_json) as progress:
        task = progress.add_task(f"upload {file.name}", total=total)

        def body() -> Iterator[bytes]:
            with file.open("rb") as f:
                while block := f.read(CHUNK):
                    progress.advance(task, len(block))
                    yield block

        try:
            params = {"checkpoints": str(checkpoints).lower()} | ({"name": name} if name else {})
            response = client.http.post(
                "/api/labs/import", params=params, content=body(),
                headers={"content-length": str(total), "content-type": "application/x-tar"},
            )  # fmt: skip
            data = raise_for(response).json()
        except (ApiError, httpx.HTTPError) as exc:
            raise _fail(exc) from exc
    if as_json:
        out.print_json(json.dumps(data))
        return
    images = ", ".join(data["images_imported"]) or "none"
    out.print(
        f"imported lab {data['name']} ({data['nodes']} nodes, {data['links']} links, stopped); "
        f"images imported: {images}",
        highlight=False,
    )


def register(labs: typer.Typer) -> None:
    """Add ``archive`` and ``import`` to the ``lab`` command group."""
    labs.command("archive")(lab_archive)
    labs.command("import")(lab_import)
