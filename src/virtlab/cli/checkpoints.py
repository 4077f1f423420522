"""``virtlab lab checkpoint|resume|checkpoints …`` and ``virtlab node checkpoint|checkpoints …``.

Registered on the ``lab`` and ``node`` command groups by :func:`register`. ``checkpoints NAME``
lists (it is ``checkpoints list NAME``); ``checkpoints rm NAME TAG`` deletes. ``lab start
--from TAG`` and ``node start|resume --from TAG`` resume through :func:`resume_lab` and
:func:`resume_nodes`.
"""

from __future__ import annotations

import contextlib
import json
from typing import Annotated, Any
from urllib.parse import quote

import click
import typer
from rich.table import Table
from typer.core import TyperGroup

from virtlab._util.units import human_size
from virtlab.cli.options import JsonOpt, UrlOpt, call, err, out

__all__ = ["ForceOpt", "FromOpt", "register", "resume_lab", "resume_nodes"]

FromOpt = Annotated[
    str | None,
    typer.Option("--from", metavar="TAG", help="Resume from this checkpoint instead of booting."),
]
ForceOpt = Annotated[
    bool,
    typer.Option("--force", help="With --from: kill what runs first (its state since is lost)."),
]
TagArg = Annotated[str, typer.Argument(help="The checkpoint's tag: a letter, then letters, "
                                            "digits, '_', '.' or '-'.")]  # fmt: skip


class _ListByDefault(TyperGroup):
    """``checkpoints NAME`` means ``checkpoints list NAME``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["list", *args]
        return super().parse_args(ctx, args)


def _lab(name: str) -> str:
    return f"/api/labs/{quote(name, safe='')}/checkpoints"


def _node(ref: str) -> str:
    return f"/api/nodes/{quote(ref, safe='')}/checkpoints"


def _saving(what: str, as_json: bool) -> Any:
    """A spinner on stderr while the server saves (a terminal only)."""
    show = err.is_terminal and not as_json
    return err.status(f"saving {what}…") if show else contextlib.nullcontext()


def _size(row: dict) -> str:
    return f"{human_size(row['vm_state_size'])} of {row['ram_mb']} MiB RAM"


# -- labs ---------------------------------------------------------------------------------------


def lab_checkpoint(name: str, tag: TagArg, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Save every node of a running lab at one moment.

    All nodes are paused together, each is saved (memory, devices, disk) into its own disk,
    then all run on. Resume with `virtlab lab resume NAME TAG`."""
    with _saving(f"lab {name} as {tag}", as_json):
        data = call(url, "POST", _lab(name), json={"tag": tag}).json()
    if as_json:
        out.print_json(json.dumps(data))
        return
    slowest = max(n["save_seconds"] for n in data["nodes"])
    out.print(
        f"lab {name}: checkpoint {tag} of {len(data['nodes'])} nodes, "
        f"{human_size(data['vm_state_size'])} of machine state (the slowest save "
        f"{slowest:.2f} s)",
        highlight=False,
    )


def resume_lab(url: str | None, name: str, tag: str, force: bool, as_json: bool) -> None:
    params = {"force": "true"} if force else {}
    path = f"{_lab(name)}/{quote(tag, safe='')}/resume"
    data = call(url, "POST", path, params=params).json()
    if as_json:
        out.print_json(json.dumps(data))
    else:
        out.print(f"lab {name}: resumed from {tag}; {data['running']} of {data['nodes']} nodes "
                  "running", highlight=False)  # fmt: skip


def lab_resume(
    name: str, tag: TagArg, force: Annotated[bool, typer.Option(
        "--force", help="Kill the nodes that run first (their state since is lost).")] = False,
    url: UrlOpt = None, as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Start every node of a stopped lab from a checkpoint (all of them, or none).

    The nodes run on from the saved moment: consoles, addresses and links as they were."""
    resume_lab(url, name, tag, force, as_json)


lab_group = typer.Typer(cls=_ListByDefault, no_args_is_help=True)


@lab_group.command("list")
def lab_list(name: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List a lab's checkpoints."""
    data = call(url, "GET", _lab(name)).json()
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table("tag", "state", "taken", "nodes", "machine state", "qemu", "machine")
    for c in data:
        first = c["nodes"][0] if c["nodes"] else {"qemu_version": "", "machine": ""}
        table.add_row(c["tag"], c["state"], c["created_at"][:19].replace("T", " "),
                      str(len(c["nodes"])), _size(c), first["qemu_version"],
                      first["machine"])  # fmt: skip
    out.print(table)


@lab_group.command("rm")
def lab_rm(name: str, tags: Annotated[list[str], typer.Argument(help="Tags.")],
           url: UrlOpt = None) -> None:  # fmt: skip
    """Delete a lab's checkpoints from every node's disk."""
    for tag in tags:
        call(url, "DELETE", f"{_lab(name)}/{quote(tag, safe='')}")
        out.print(f"lab {name}: deleted checkpoint {tag}", highlight=False)


# -- nodes --------------------------------------------------------------------------------------


def node_checkpoint(node: str, tag: TagArg, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Save a running node: memory, devices and disk, into its disk.

    The guest pauses for the save and runs on. Resume with `virtlab node start NODE --from TAG`."""
    with _saving(f"node {node} as {tag}", as_json):
        data = call(url, "POST", _node(node), json={"tag": tag}).json()
    if as_json:
        out.print_json(json.dumps(data))
        return
    out.print(f"{data['node']}: checkpoint {tag}, {_size(data)}, saved in "
              f"{data['save_seconds']:.2f} s", highlight=False)  # fmt: skip


def resume_nodes(url: str | None, nodes: list[str], tag: str, force: bool, as_json: bool) -> None:
    params = {"force": "true"} if force else {}
    results = [
        call(url, "POST", f"{_node(n)}/{quote(tag, safe='')}/resume", params=params).json()
        for n in nodes
    ]
    if as_json:
        out.print_json(json.dumps(results))
    else:
        for node in results:
            out.print(f"{node['name']}: {node['state']} (from checkpoint {tag})", highlight=False)


node_group = typer.Typer(cls=_ListByDefault, no_args_is_help=True)


@node_group.command("list")
def node_list(node: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List a node's checkpoints, its own and its parts of lab checkpoints."""
    data = call(url, "GET", _node(node)).json()
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table("tag", "of the lab", "state", "taken", "machine state", "saved in", "qemu",
                  "machine")  # fmt: skip
    for c in data:
        table.add_row(c["tag"], "yes" if c["lab_checkpoint"] else "", c["state"],
                      c["created_at"][:19].replace("T", " "), _size(c),
                      f"{c['save_seconds']:.2f} s", c["qemu_version"], c["machine"])  # fmt: skip
    out.print(table)


@node_group.command("rm")
def node_rm(node: str, tags: Annotated[list[str], typer.Argument(help="Tags.")],
            url: UrlOpt = None) -> None:  # fmt: skip
    """Delete a node's own checkpoints (running or not)."""
    for tag in tags:
        call(url, "DELETE", f"{_node(node)}/{quote(tag, safe='')}")
        out.print(f"{node}: deleted checkpoint {tag}", highlight=False)


def register(labs: typer.Typer, nodes: typer.Typer) -> None:
    """Add the checkpoint commands to the ``lab`` and ``node`` command groups."""
    labs.command("checkpoint")(lab_checkpoint)
    labs.command("resume")(lab_resume)
    labs.add_typer(
        lab_group, name="checkpoints",
        help="List a lab's checkpoints (NAME), or delete some (rm NAME TAG…).",
    )  # fmt: skip
    nodes.command("checkpoint")(node_checkpoint)
    nodes.add_typer(
        node_group, name="checkpoints",
        help="List a node's checkpoints (NODE), or delete some (rm NODE TAG…).",
    )  # fmt: skip
