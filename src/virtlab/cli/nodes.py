"""``virtlab node …``: create, list, show, start, stop, kill, reset, suspend, resume, wipe, rm,
console, console-ticket, screenshot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

import typer
from rich.table import Column, Table

from virtlab.cli.checkpoints import ForceOpt, FromOpt, resume_nodes
from virtlab.cli.client import ApiError, Client
from virtlab.cli.options import JsonOpt, UrlOpt, call, err, out

app = typer.Typer(no_args_is_help=True)


def _node_path(ref: str) -> str:
    return f"/api/nodes/{quote(ref, safe='')}"


def _print_node(node: dict[str, Any], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(node))
        return
    grid = Table.grid(padding=(0, 2))
    for key in ("name", "id", "state", "image", "cpus", "ram_mb", "disk_bus", "nic_model"):
        grid.add_row(f"[bold]{key}[/bold]", str(node[key]))
    for iface in node["interfaces"]:
        grid.add_row(f"[bold]{iface['name']}[/bold]", iface["mac"])
    serial, vnc = node["consoles"]["serial"], node["consoles"]["vnc"]
    if serial and serial["telnet_port"]:
        grid.add_row(
            "[bold]telnet[/bold]", f"telnet {serial['telnet_host']} {serial['telnet_port']}"
        )
    if vnc and vnc["port"]:
        grid.add_row("[bold]vnc[/bold]", f"{vnc['host']}:{vnc['port']}")
    if (serial and serial["telnet_port"]) or (vnc and vnc["port"]):
        grid.add_row("[bold]tickets[/bold]", _ticket_advice(node))
    if node["detail"]:
        grid.add_row("[bold]detail[/bold]", node["detail"])
    out.print(grid)


def _ticket_advice(node: dict[str, Any]) -> str:
    """Whether the telnet and VNC ports ask for a ticket, and how to get one."""
    if not node["consoles"].get("tickets_required"):
        return "not needed: the console ports listen on loopback only"
    name = node["name"]  # a node name holds no markup: letters, digits, "_.-"
    return (
        f"required at the telnet and VNC ports: `virtlab node console-ticket {name}` (telnet), "
        f"`virtlab node console-ticket {name} --kind vnc` (the VNC password); each works once"
    )


@app.command("create")
def create(
    name: str,
    image: Annotated[str, typer.Option("--image", "-i", help="A catalog image's name.")],
    lab: Annotated[str, typer.Option("--lab", "-l", help="The lab it goes into.")] = "default",
    cpus: int = 1,
    ram_mb: Annotated[int, typer.Option("--ram-mb", help="Memory in MiB.")] = 256,
    disk_bus: Annotated[str, typer.Option(help="virtio, ide, sata or scsi.")] = "virtio",
    nics: Annotated[int, typer.Option(help="How many NICs (eth0…).")] = 1,
    nic_model: Annotated[str, typer.Option(help="virtio-net-pci, e1000, rtl8139, vmxnet3.")] = (
        "virtio-net-pci"
    ),
    disk_size_mb: Annotated[
        int | None, typer.Option(help="For a CD-ROM image: the blank disk's size.")
    ] = None,
    extra_arg: Annotated[
        list[str] | None, typer.Option("--extra-arg", help="An extra QEMU argument (repeat).")
    ] = None,
    start: Annotated[
        bool, typer.Option("--start", help="Start it at once (a start that fails makes nothing).")
    ] = False,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a node over a catalog image (its disk is a copy-on-write overlay)."""
    body = {
        "name": name, "image": image, "lab": lab, "cpus": cpus, "ram_mb": ram_mb,
        "disk_bus": disk_bus, "nics": nics, "nic_model": nic_model, "disk_size_mb": disk_size_mb,
        "extra_args": extra_arg or [], "start": start,
    }  # fmt: skip
    _print_node(call(url, "POST", "/api/nodes", json=body).json(), as_json)


@app.command("list")
def list_(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List nodes."""
    nodes = call(url, "GET", "/api/nodes").json()
    if as_json:
        out.print_json(json.dumps(nodes))
        return
    table = Table(Column("name", no_wrap=True), "state", "image", "cpus", "ram", "telnet", "vnc")
    for node in nodes:
        serial, vnc = node["consoles"]["serial"], node["consoles"]["vnc"]
        table.add_row(
            node["name"],
            node["state"],
            node["image"],
            str(node["cpus"]),
            f"{node['ram_mb']} MiB",
            str(serial["telnet_port"] or "") if serial else "",
            str(vnc["port"] or "") if vnc else "",
        )
    out.print(table)


@app.command("show")
def show(node: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Show a node."""
    _print_node(call(url, "GET", _node_path(node)).json(), as_json)


def _act(url: str | None, nodes: list[str], action: str, as_json: bool) -> None:
    """POST the action to each node in turn; print each node's new state."""
    results = [call(url, "POST", f"{_node_path(n)}/{action}").json() for n in nodes]
    if as_json:
        out.print_json(json.dumps(results))
    else:
        for node in results:
            out.print(f"{node['name']}: {node['state']}")


def _lifecycle(action: str, doc: str) -> None:
    def command(
        nodes: Annotated[list[str], typer.Argument(help="Node names or ids.")],
        url: UrlOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        _act(url, nodes, action, as_json)

    command.__doc__ = doc
    app.command(action)(command)


def _from_checkpoint(action: str, doc: str) -> None:
    def command(
        nodes: Annotated[list[str], typer.Argument(help="Node names or ids.")],
        from_: FromOpt = None,
        force: ForceOpt = False,
        url: UrlOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        if from_ is not None:
            resume_nodes(url, nodes, from_, force, as_json)
            return
        _act(url, nodes, action, as_json)

    command.__doc__ = doc
    app.command(action)(command)


_from_checkpoint(
    "start", "Start nodes (returns once QEMU runs); with --from TAG, from a checkpoint."
)
_lifecycle("stop", "Stop nodes: ACPI power-down, then a hard stop after the timeout.")
_lifecycle("kill", "End nodes' QEMU at once.")
_lifecycle("reset", "Reset running nodes.")
_lifecycle("suspend", "Pause running nodes.")
_from_checkpoint(
    "resume", "Resume suspended nodes; with --from TAG, start stopped ones from a checkpoint."
)
_lifecycle("wipe", "Give stopped nodes a fresh disk (their changes are lost).")


@app.command("rm")
def rm(nodes: list[str], url: UrlOpt = None) -> None:
    """Delete stopped nodes and their disks."""
    for node in nodes:
        call(url, "DELETE", _node_path(node))
        out.print(f"removed {node}")


@app.command("screenshot")
def screenshot(
    node: str,
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file to write.")] = Path(
        "screenshot.png"
    ),
    url: UrlOpt = None,
) -> None:
    """Save the node's display as a PNG."""
    data = call(url, "GET", f"{_node_path(node)}/screenshot").content
    output.write_bytes(data)
    out.print(f"wrote {output} ({len(data)} bytes)")


@app.command("console")
def console(node: str, url: UrlOpt = None) -> None:
    """Attach this terminal to the node's serial console (Ctrl-] quits)."""
    client = Client(url)
    try:
        record = client.get(_node_path(node))
    except ApiError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    ws_url = client.url.replace("http", "ws", 1) + record["consoles"]["serial"]["ws"]
    from virtlab.cli.serial_console import run_console  # websockets: this command's alone

    raise typer.Exit(run_console(ws_url, record["name"], client.headers))


@app.command("console-ticket")
def console_ticket(
    node: str,
    kind: Annotated[
        Literal["telnet", "vnc"], typer.Option("--kind", "-k", help="telnet or vnc.")
    ] = "telnet",
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A one-time ticket for a running node's telnet or VNC port (asked for when the ports
    listen beyond loopback): type it at the telnet prompt, or give it as the VNC password."""
    reply = call(url, "POST", f"{_node_path(node)}/console/ticket", json={"kind": kind}).json()
    if as_json:
        out.print_json(json.dumps(reply))
        return
    sep = " " if kind == "telnet" else ":"
    where = f"{reply['host']}{sep}{reply['port']}"
    if not reply["required"]:
        out.print(f"{kind} {where}: this port asks for no ticket (it listens on loopback)")
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_row("[bold]ticket[/bold]", reply["ticket"])
    grid.add_row("[bold]connect[/bold]", f"telnet {where}" if kind == "telnet" else where)
    grid.add_row(
        "[bold]expires[/bold]",
        f"in {reply['expires_in']:g} seconds; it works once",
    )
    if kind == "vnc":
        grid.add_row("", "give the ticket as the VNC password")
    else:
        grid.add_row("", "paste the ticket at the prompt 'virtlab console ticket:'")
    out.print(grid, highlight=False)
