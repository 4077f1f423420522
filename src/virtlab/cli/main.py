"""``virtlab``: the entry point and its sub-commands.

``virtlab serve`` is dispatched before the other commands are built: their modules (httpx, rich
tables and progress bars, a few hundred typer parameters) are the client's, and would add about
a third of a second to every server start.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

_SETTINGS = {"pretty_exceptions_enable": False}


def build() -> typer.Typer:
    """The whole command line."""
    from virtlab.cli import checkpoints, doctor, hosts, images, labs, nodes, serve, users

    app = typer.Typer(
        help="virtlab: a self-hosted virtual network lab server.",
        no_args_is_help=True,
        **_SETTINGS,  # type: ignore[arg-type]
    )
    app.command("serve")(serve.serve)
    app.command("doctor")(doctor.doctor)
    app.command("login")(users.login)
    app.command("logout")(users.logout)
    app.add_typer(users.app, name="user", help="Users and API tokens (adding users: admins only).")
    app.add_typer(images.app, name="image", help="Import, list, check and remove disk images.")
    app.add_typer(nodes.app, name="node", help="Create, run and reach QEMU nodes.")
    app.add_typer(labs.labs, name="lab", help="Deploy, run, export and draw labs.")
    app.add_typer(labs.links, name="link", help="Cable, cut, capture and impair links.")
    app.add_typer(hosts.app, name="host", help="Add, list, drain and remove libvirt hosts.")
    checkpoints.register(labs.labs, nodes.app)
    return app


def _serve() -> None:
    """``virtlab serve ...`` alone: the same command, options and help as within ``build()``."""
    from virtlab.cli.serve import serve

    alone = typer.Typer(add_completion=False, **_SETTINGS)  # type: ignore[arg-type]
    alone.command("serve")(serve)
    alone(args=sys.argv[2:], prog_name=f"{Path(sys.argv[0]).name} serve")


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        _serve()
    else:
        build()()
