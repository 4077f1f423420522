"""``virtlab host …``: the machines nodes run on (the local one, libvirt hosts), through the API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table

from virtlab.cli.options import JsonOpt, UrlOpt, call, out

__all__ = ["app", "describe"]

app = typer.Typer(no_args_is_help=True)


def _path(name: str) -> str:
    return f"/api/hosts/{quote(name, safe='')}"


def _print(data: Any, as_json: bool, text: str) -> None:
    if as_json:
        out.print_json(json.dumps(data))
    else:
        out.print(text, highlight=False)


def describe(host: dict[str, Any]) -> str:
    """One line of a host's state and facts."""
    facts = host["facts"]
    if not host["reachable"]:
        state = f"[red]not answering[/red]: {host['reason']}"
    else:
        state = "[yellow]drained[/yellow]" if host["drained"] else "[green]up[/green]"
    versions = f"QEMU {facts['qemu_version'] or '?'}"
    if facts["libvirt_version"]:
        versions = f"libvirt {facts['libvirt_version']}, {versions}"
    accel = "/".join(facts["accelerators"]) or "?"
    return (
        f"{state}; {versions}; accelerator {accel}; {facts['cpus']} CPUs; "
        f"{facts['free_memory_mb']} of {facts['memory_mb']} MB free; {host['nodes']} node(s) "
        f"promised {host['ram_promised_mb']} MB, room {host['room_mb']} MB"
    )


@app.command("list")
def host_list(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List hosts: whether each answers, its node count and room."""
    data = call(url, "GET", "/api/hosts").json()
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table("name", "uri", "state", "nodes", "room MB", "free MB", "CPUs")
    for host in data:
        state = "drained" if host["drained"] else "up"
        table.add_row(
            host["name"], host["uri"], state if host["reachable"] else "not answering",
            str(host["nodes"]), str(host["room_mb"]), str(host["facts"]["free_memory_mb"]),
            str(host["facts"]["cpus"]),
        )  # fmt: skip
    out.print(table)


@app.command("show")
def host_show(name: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """A host's facts, read from it again."""
    data = call(url, "GET", _path(name)).json()
    _print(data, as_json, f"{data['name']} ({data['uri']}): {describe(data)}")


@app.command("add")
def host_add(
    name: str,
    uri: Annotated[str, typer.Argument(help="qemu+tls://HOST/system, qemu+ssh://USER@HOST/system")],
    tls_cert: Annotated[
        Path | None,
        typer.Option(help="Folder with cacert.pem, clientcert.pem, clientkey.pem (qemu+tls)."),
    ] = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a libvirt host (it must answer now)."""
    body = {"name": name, "uri": uri, "tls_cert": str(tls_cert.resolve()) if tls_cert else None}
    data = call(url, "POST", "/api/hosts", json=body).json()
    _print(data, as_json, f"added host {name}: {describe(data)}")


@app.command("drain")
def host_drain(
    name: str,
    undo: Annotated[bool, typer.Option("--undo", help="Let it take new nodes again.")] = False,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Keep new nodes off a host (its nodes stay)."""
    data = call(url, "POST", _path(name) + "/drain", json={"drained": not undo}).json()
    _print(data, as_json, f"host {name} {'takes new nodes again' if undo else 'is drained'}")


@app.command("rm")
def host_rm(name: str, url: UrlOpt = None) -> None:
    """Remove a host that has no nodes."""
    call(url, "DELETE", _path(name))
    out.print(f"removed host {name}")
