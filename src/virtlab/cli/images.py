"""``virtlab image …``: import, list, show, verify and remove catalog images."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn
from rich.table import Column, Table

from virtlab._util.units import human_size
from virtlab.cli.client import ApiError, Client, raise_for
from virtlab.cli.options import JsonOpt, UrlOpt, err, out

app = typer.Typer(no_args_is_help=True)

CHUNK = 1 << 20


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc}", highlight=False)
    return typer.Exit(1)


@app.command("import")
def import_(
    files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, readable=True)],
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload and import image files (any format; compressed and OVA too)."""
    client = Client(url, timeout=None)  # type: ignore[arg-type]
    results: list[dict[str, Any]] = []
    failed = 0
    for path in files:
        try:
            results.append(_import_one(client, path, show=not as_json))
        except ApiError as exc:
            failed += 1
            err.print(f"[red]refused:[/red] {path.name}: {exc}", highlight=False)
    if as_json:
        out.print_json(json.dumps(results))
    if failed:
        raise typer.Exit(1)


def _import_one(client: Client, path: Path, *, show: bool) -> dict[str, Any]:
    import_id = uuid.uuid4().hex
    total = path.stat().st_size
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[note]}"),
        console=err,
        disable=not show,
        transient=False,
    ) as progress:
        upload = progress.add_task(f"upload  {path.name}", total=total, note="")
        server = progress.add_task("convert", total=100, note="waiting", visible=False)
        result: dict[str, Any] = {}

        def body() -> Iterator[bytes]:
            with path.open("rb") as f:
                while block := f.read(CHUNK):
                    progress.advance(upload, len(block))
                    done = progress.tasks[upload].completed
                    progress.update(upload, note=f"{human_size(int(done))} of {human_size(total)}")
                    yield block

        def send() -> None:
            try:
                response = client.http.put(
                    f"/api/images/{quote(path.name)}",
                    params={"import_id": import_id},
                    content=body(),
                    headers={"content-length": str(total)},
                )
                result["response"] = response
            except httpx.HTTPError as exc:
                result["error"] = exc

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        while sender.is_alive():
            sender.join(0.25)
            _show_stage(client, import_id, progress, server)
        if "error" in result:
            raise ApiError(f"uploading {path.name} to {client.url} failed: {result['error']}")
        record = raise_for(result["response"]).json()
    if show:
        out.print(
            f"[green]imported[/green] {path.name} → [bold]{record['name']}[/bold] "
            f"({record['source_format']} → {record['format']}, "
            f"{human_size(record['virtual_size'])})",
            highlight=False,
        )
    return record


def _show_stage(client: Client, import_id: str, progress: Progress, task: TaskID) -> None:
    try:
        response = client.http.get(f"/api/imports/{import_id}", timeout=5)
    except httpx.HTTPError:
        return
    if response.status_code != 200:
        return
    job = response.json()
    if job["stage"] != "upload":
        progress.update(
            task,
            visible=True,
            completed=job["percent"],
            note=job["stage"],
            description=f"server  {job['stage']}",
        )


@app.command("list")
def list_(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List the images in the catalog."""
    try:
        images = Client(url).get("/api/images")
    except ApiError as exc:
        raise _fail(exc) from exc
    if as_json:
        out.print_json(json.dumps(images))
        return
    table = Table(
        Column("name", no_wrap=True), "kind", "format", "from", "virtual", "on disk",
        Column("sha256", max_width=12, no_wrap=True), Column("created", no_wrap=True),
    )  # fmt: skip
    for image in images:
        table.add_row(
            image["name"],
            image["kind"],
            image["format"],
            image["source_format"],
            human_size(image["virtual_size"]),
            human_size(image["actual_size"]),
            image["sha256"][:12],
            image["created_at"][:16].replace("T", " "),
        )
    out.print(table)


@app.command("show")
def show(name: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Show one image's record."""
    try:
        image = Client(url).get(f"/api/images/{quote(name, safe='')}")
    except ApiError as exc:
        raise _fail(exc) from exc
    if as_json:
        out.print_json(json.dumps(image))
        return
    table = Table.grid(padding=(0, 2))
    for key, value in image.items():
        shown = human_size(value) if key.endswith("_size") else value
        table.add_row(
            f"[bold]{key}[/bold]", ", ".join(shown) if isinstance(shown, list) else str(shown)
        )
    out.print(table)


@app.command("verify")
def verify(
    fix: Annotated[
        bool,
        typer.Option("--fix", help="Convert mislabelled base files, drop rows of missing files."),
    ] = False,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rescan the images directory, then check every image (file, format, checksum, consistency)."""
    try:
        report = (
            Client(url, timeout=None)
            .request(  # type: ignore[arg-type]
                "POST", "/api/images/verify", params={"fix": fix}
            )
            .json()
        )
    except ApiError as exc:
        raise _fail(exc) from exc
    if as_json:
        out.print_json(json.dumps(report))
    else:
        for name in report["scan"]["added"]:
            out.print(f"[cyan]registered[/cyan] {name} (found in the images directory)")
        for name, reason in report["scan"]["refused"].items():
            out.print(f"[red]refused[/red]    {name}: {reason}", highlight=False)
        for image in report["images"]:
            mark = "[green]ok[/green]      " if image["ok"] else "[red]problem[/red] "
            out.print(f"{mark} {image['name']}", highlight=False)
            for problem in image["problems"]:
                out.print(f"           - {problem}", highlight=False)
            for fixed in image["fixed"]:
                out.print(f"           [green]fixed:[/green] {fixed}", highlight=False)
    if not report["ok"]:
        raise typer.Exit(1)


@app.command("rm")
def rm(names: list[str], url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Delete images and their files."""
    client = Client(url)
    done, failed = [], 0
    for name in names:
        try:
            client.request("DELETE", f"/api/images/{quote(name, safe='')}")
            done.append(name)
            if not as_json:
                out.print(f"removed {name}")
        except ApiError as exc:
            failed += 1
            err.print(f"[red]error:[/red] {name}: {exc}", highlight=False)
    if as_json:
        out.print_json(json.dumps({"removed": done}))
    if failed:
        raise typer.Exit(1)


@app.command("boot-test")
def boot_test(
    name: str,
    seconds: Annotated[float, typer.Option(help="How long to wait.")] = 60,
    expect: Annotated[
        str | None, typer.Option(help="Text that must appear on the serial console.")
    ] = None,
    screenshot: Annotated[
        Path | None, typer.Option(help="Write the final screen here (PNG).")
    ] = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Boot an image on a throwaway overlay; pass when EXPECT shows on the serial console."""
    body = {"seconds": seconds, "expect": expect}
    try:
        result = (
            Client(url, timeout=seconds + 120)
            .request("POST", f"/api/images/{quote(name, safe='')}/boot-test", json=body)
            .json()
        )
    except ApiError as exc:
        raise _fail(exc) from exc
    png = result.pop("screenshot_png")
    if screenshot is not None and png:
        screenshot.write_bytes(base64.b64decode(png))
    if as_json:
        out.print_json(json.dumps({**result, "screenshot": str(screenshot) if png else None}))
    else:
        mark = "[green]passed[/green]" if result["passed"] else "[red]failed[/red]"
        out.print(f"{mark} {name}: {result['reason']}", highlight=False, soft_wrap=True)
        tail = "\n".join(result["serial"].splitlines()[-15:])
        if tail:
            out.print("[dim]last serial lines:[/dim]")
            out.print(tail, highlight=False, markup=False)
    if not result["passed"]:
        raise typer.Exit(1)
