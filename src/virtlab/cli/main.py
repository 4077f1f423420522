"""``virtlab``: the entry point and its sub-commands."""

from __future__ import annotations

import typer

from virtlab.cli import checkpoints, doctor, hosts, images, labs, nodes, serve, users

app = typer.Typer(
    help="virtlab: a self-hosted virtual network lab server.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
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


def main() -> None:
    app()
