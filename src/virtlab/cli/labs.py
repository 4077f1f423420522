"""``virtlab lab …`` and ``virtlab link …``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table

from virtlab.cli.checkpoints import ForceOpt, FromOpt, resume_lab
from virtlab.cli.lab_archive import register as register_lab_archive
from virtlab.cli.options import JsonOpt, UrlOpt, call, err, out

labs = typer.Typer(no_args_is_help=True)
links = typer.Typer(no_args_is_help=True)
register_lab_archive(labs)


def _lab(name: str) -> str:
    return f"/api/labs/{quote(name, safe='')}"


def _print(data: Any, as_json: bool, text: str) -> None:
    if as_json:
        out.print_json(json.dumps(data))
    else:
        out.print(text, highlight=False)


# -- labs ---------------------------------------------------------------------------------------


@labs.command("list")
def lab_list(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List labs."""
    data = call(url, "GET", "/api/labs").json()
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table("name", "nodes", "running", "links")
    for lab in data:
        table.add_row(lab["name"], str(lab["nodes"]), str(lab["running"]), str(lab["links"]))
    out.print(table)


@labs.command("create")
def lab_create(name: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Create an empty lab."""
    data = call(url, "POST", "/api/labs", json={"name": name}).json()
    _print(data, as_json, f"created lab {data['name']}")


@labs.command("deploy")
def lab_deploy(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    image: Annotated[str | None, typer.Option(help="Replaces topology.defaults.image.")] = None,
    start: Annotated[bool, typer.Option("--start/--no-start", help="Start the nodes.")] = True,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Deploy a lab from a topology file (all or nothing; the same file twice changes nothing)."""
    body = {"topology": file.read_text(), "image": image, "start": start}
    data = call(url, "POST", "/api/labs", json=body).json()
    verb = "deployed" if data["changed"] else "unchanged:"
    _print(
        data, as_json, f"{verb} lab {data['name']} ({data['nodes']} nodes, {data['links']} links)"
    )


@labs.command("destroy")
def lab_destroy(name: str, url: UrlOpt = None) -> None:
    """Kill and delete every node and link of a lab, then the lab."""
    call(url, "DELETE", _lab(name))
    out.print(f"destroyed lab {name}")


@labs.command("inspect")
def lab_inspect(name: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Show a lab's nodes (state, consoles) and links."""
    data = call(url, "GET", _lab(name)).json()
    if as_json:
        out.print_json(json.dumps(data))
        return
    nodes = Table("node", "state", "image", "telnet", "vnc", title=f"lab {name}")
    for node in data["node_list"]:
        serial, vnc = node["consoles"]["serial"], node["consoles"]["vnc"]
        nodes.add_row(
            node["name"], node["state"], node["image"],
            str(serial["telnet_port"] or "") if serial else "",
            str(vnc["port"] or "") if vnc else "",
        )  # fmt: skip
    out.print(nodes)
    cables = Table("link", "a", "b", "state", "path", "impairment")
    for link in data["link_list"]:
        path = link.get("path") or ("relayed" if link["relayed"] else "direct")
        cables.add_row(link["id"], link["a"], link["b"], link["state"], path,
                       json.dumps(link["impairment"]) if link["impairment"] else "")  # fmt: skip
    out.print(cables)


def _lab_action(action: str, doc: str) -> None:
    def command(name: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
        data = call(url, "POST", f"{_lab(name)}/{action}").json()
        _print(data, as_json, f"lab {name}: {data['running']} of {data['nodes']} nodes running")

    command.__doc__ = doc
    labs.command(action)(command)


@labs.command("start")
def lab_start(
    name: str, from_: FromOpt = None, force: ForceOpt = False, url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Start every stopped node of a lab (with --from TAG: resume them from a checkpoint)."""
    if from_ is not None:
        resume_lab(url, name, from_, force, as_json)
        return
    data = call(url, "POST", f"{_lab(name)}/start").json()
    _print(data, as_json, f"lab {name}: {data['running']} of {data['nodes']} nodes running")


_lab_action("stop", "Stop every running node of a lab.")


@labs.command("export")
def lab_export(
    name: str,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to a file.")] = None,
    url: UrlOpt = None,
) -> None:
    """The lab as a topology file that redeploys it (edits made through the API included)."""
    text = call(url, "GET", f"{_lab(name)}/export").text
    if output:
        output.write_text(text)
        err.print(f"wrote {output}")
    else:
        out.out(text, highlight=False, end="")


@labs.command("graph")
def lab_graph(
    name: str,
    fmt: Annotated[str, typer.Option("--format", help="svg or dot.")] = "svg",
    output: Annotated[Path | None, typer.Option("--output", "-o")] = None,
    url: UrlOpt = None,
) -> None:
    """A picture of the lab: SVG (rendered by Graphviz) or Graphviz DOT."""
    text = call(url, "GET", f"{_lab(name)}/graph", params={"format": fmt}).text
    if output:
        output.write_text(text)
        err.print(f"wrote {output}")
    else:
        out.out(text, highlight=False, end="")


# -- links --------------------------------------------------------------------------------------


def _link_line(link: dict) -> str:
    path = link.get("path") or ("relayed" if link["relayed"] else "direct")
    extra = f" {path}" if path != "direct" else ""
    return f"{link['id']}  {link['a']} <-> {link['b']}  {link['state']}{extra}"


@links.command("add")
def link_add(
    a: Annotated[str, typer.Argument(help="NODE:ethN")],
    b: Annotated[str, typer.Argument(help="NODE:ethN")],
    lab: Annotated[str, typer.Option(help="The lab of both nodes.")] = "default",
    relayed: Annotated[
        bool,
        typer.Option(
            "--relayed",
            help="Between nodes on libvirt hosts: through the server (capture and impair it "
            "live) instead of straight from host to host.",
        ),
    ] = False,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Link two interfaces (the nodes may run; nodes on libvirt hosts must be stopped)."""
    body = {"lab": lab, "a": a, "b": b, **({"relayed": True} if relayed else {})}
    data = call(url, "POST", "/api/links", json=body).json()
    _print(data, as_json, _link_line(data))


@links.command("list")
def link_list(
    lab: Annotated[str | None, typer.Option(help="Only this lab's links.")] = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List links."""
    data = call(url, "GET", "/api/links", params={"lab": lab} if lab else {}).json()
    _print(data, as_json, "\n".join(_link_line(link) for link in data))


@links.command("rm")
def link_rm(link_ids: list[str], url: UrlOpt = None) -> None:
    """Remove links."""
    for link_id in link_ids:
        call(url, "DELETE", f"/api/links/{quote(link_id, safe='')}")
        out.print(f"removed {link_id}")


def _link_state(state: str) -> None:
    def command(link_id: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
        path = f"/api/links/{quote(link_id, safe='')}"
        data = call(url, "PATCH", path, json={"state": state}).json()
        _print(data, as_json, _link_line(data))

    command.__doc__ = f"Set a link {state} (carrier {state} in both guests), live."
    links.command(state)(command)


_link_state("down")
_link_state("up")


@links.command("capture")
def link_capture(
    link_id: str,
    action: Annotated[str, typer.Argument(help="start, stop or download")],
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("capture.pcap"),
    url: UrlOpt = None,
) -> None:
    """Capture a link's frames to pcap; `download` saves the newest capture (tshark, Wireshark).

    For a live view: curl -N URL/api/links/ID/capture/stream | wireshark -k -i -"""
    path = f"/api/links/{quote(link_id, safe='')}/capture"
    if action in ("start", "stop"):
        call(url, "POST", f"{path}/{action}")
        out.print(f"capture {action}ed on {link_id}" if action == "start" else "capture stopped")
    elif action == "download":
        output.write_bytes(call(url, "GET", path).content)
        out.print(f"wrote {output}")
    else:
        err.print("error: the action is start, stop or download")
        raise typer.Exit(2)


@links.command("impair")
def link_impair(
    link_id: str,
    delay_ms: float = 0,
    jitter_ms: float = 0,
    loss_pct: float = 0,
    corrupt_pct: float = 0,
    rate_kbps: int = 0,
    direction: Annotated[str, typer.Option(help="both, a_to_b or b_to_a.")] = "both",
    clear: Annotated[bool, typer.Option("--clear", help="Remove every impairment.")] = False,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Impair a link while traffic flows: delay, jitter, loss, corruption, rate limit."""
    way = {"delay_ms": delay_ms, "jitter_ms": jitter_ms, "loss_pct": loss_pct,
           "corrupt_pct": corrupt_pct, "rate_kbps": rate_kbps}  # fmt: skip
    if direction not in ("both", "a_to_b", "b_to_a"):
        err.print("error: --direction is both, a_to_b or b_to_a")
        raise typer.Exit(2)
    directions = ("a_to_b", "b_to_a") if direction == "both" else (direction,)
    impairment = {} if clear else {d: way for d in directions}
    path = f"/api/links/{quote(link_id, safe='')}"
    data = call(url, "PATCH", path, json={"impairment": impairment}).json()
    _print(data, as_json, f"{_link_line(data)}  {json.dumps(data['impairment'])}")
