"""``virtlab login``, ``virtlab logout`` and ``virtlab user …``: access, through the API.

``login`` asks the server for an API token (labelled ``cli@HOSTNAME``) and keeps it in the
credentials file (see :mod:`virtlab.cli.client`); every later command sends it.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import socket
import sys
from typing import Annotated, Any
from urllib.parse import quote

import typer

from virtlab.cli.client import (
    ApiError,
    Client,
    forget_token,
    server_url,
    store_token,
    stored_token,
)
from virtlab.cli.options import JsonOpt, UrlOpt, err, out

__all__ = ["app", "login", "logout"]

app = typer.Typer(no_args_is_help=True)
tokens = typer.Typer(no_args_is_help=True)
app.add_typer(tokens, name="token", help="Your API tokens: make, list, revoke.")

PasswordStdin = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the password(s) from stdin, one a line."),
]


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc}", highlight=False)
    return typer.Exit(1)


def _call(url: str | None, method: str, path: str, **kwargs: Any) -> Any:
    try:
        return Client(url).request(method, path, **kwargs)
    except ApiError as exc:
        raise _fail(exc) from exc


def _stdin_lines(count: int) -> list[str]:
    lines = [sys.stdin.readline().rstrip("\r\n") for _ in range(count)]
    if not all(lines):
        raise _fail(ValueError(f"expected {count} password line(s) on stdin"))
    return lines


def _new_password(from_stdin: bool, prompt: str = "New password") -> str:
    if from_stdin:
        return _stdin_lines(1)[0]
    return typer.prompt(prompt, hide_input=True, confirmation_prompt=True)


def login(
    user: Annotated[str, typer.Option("--user", "-u", help="Your user name.")] = "admin",
    password_stdin: PasswordStdin = False,
    url: UrlOpt = None,
) -> None:
    """Log in: make an API token for this machine and keep it for later commands."""
    url = server_url(url)
    password = _stdin_lines(1)[0] if password_stdin else getpass.getpass(f"{user}'s password: ")
    body = {"name": user, "password": password, "kind": "api",
            "label": f"cli@{socket.gethostname()}"[:63]}  # fmt: skip
    try:
        reply = Client(url, token="").request("POST", "/api/login", json=body).json()
    except ApiError as exc:
        raise _fail(exc) from exc
    old = stored_token(url)
    if old:  # a login replaces the token kept before; end it on the server too
        with contextlib.suppress(ApiError):
            Client(url, token=old).request("POST", "/api/logout")
    path = store_token(url, reply["token"], reply["user"]["name"])
    role = reply["user"]["role"]
    out.print(f"logged in to {url} as {user} ({role}); the token is kept in {path}")


def logout(url: UrlOpt = None) -> None:
    """Log out: revoke the token `virtlab login` kept, and forget it."""
    url = server_url(url)
    token = stored_token(url)
    if token is None:
        out.print(f"not logged in to {url} (no token kept for it)")
        return
    try:
        Client(url, token=token).request("POST", "/api/logout")
    except ApiError as exc:  # already revoked, or the server is away: forget it anyway
        err.print(f"[yellow]note:[/yellow] {exc}", highlight=False)
    forget_token(url)
    out.print(f"logged out of {url}")


@app.command("list")
def list_(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List the users (admins only)."""
    users = _call(url, "GET", "/api/users").json()
    if as_json:
        out.print_json(json.dumps(users))
        return
    for u in users:
        out.print(f"{u['name']:<32} {u['role']:<6} since {u['created_at'][:19]}", highlight=False)


@app.command("add")
def add(
    name: str,
    role: Annotated[str, typer.Option("--role", help="admin or user.")] = "user",
    password_stdin: PasswordStdin = False,
    url: UrlOpt = None,
) -> None:
    """Add a user (admins only); without --password-stdin a password is generated and shown."""
    body: dict[str, Any] = {"name": name, "role": role}
    if password_stdin:
        body["password"] = _stdin_lines(1)[0]
    made = _call(url, "POST", "/api/users", json=body).json()
    out.print(f"added {name} ({made['user']['role']})")
    if made.get("password"):
        out.print(f"password: {made['password']} (shown once; they change it with "
                  "'virtlab user passwd')", highlight=False)  # fmt: skip


@app.command("rm")
def rm(name: str, url: UrlOpt = None) -> None:
    """Remove a user (admins only): their tokens end, their labs go to the admins."""
    _call(url, "DELETE", f"/api/users/{quote(name, safe='')}")
    out.print(f"removed {name}")


@app.command("passwd")
def passwd(
    name: Annotated[str | None, typer.Argument(help="Another user's (admins only).")] = None,
    password_stdin: PasswordStdin = False,
    url: UrlOpt = None,
) -> None:
    """Change your password (the current one, then the new one), or, as an admin, another
    user's. Their browser sessions end; API tokens stay."""
    if name is None:
        if password_stdin:
            current, new = _stdin_lines(2)
        else:
            current = typer.prompt("Current password", hide_input=True)
            new = _new_password(False)
        _call(url, "POST", "/api/me/password", json={"current": current, "new": new})
        out.print("password changed; your browser sessions have ended")
        return
    body = {"password": _new_password(password_stdin, f"New password for {name}")}
    _call(url, "PATCH", f"/api/users/{quote(name, safe='')}", json=body)
    out.print(f"password of {name} changed; their browser sessions have ended")


@tokens.command("create")
def token_create(
    label: Annotated[str, typer.Option("--label", help="What it is for.")] = "",
    hours: Annotated[float | None, typer.Option("--hours", help="Lifetime.")] = None,
    url: UrlOpt = None,
) -> None:
    """Make an API token; it is shown once (give it to a program as VIRTLAB_TOKEN)."""
    made = _call(url, "POST", "/api/tokens", json={"label": label, "hours": hours}).json()
    out.print(made["value"], highlight=False, soft_wrap=True)
    err.print(f"token {made['token']['id']}: shown once; revoke it with "
              f"'virtlab user token rm {made['token']['id']}'", highlight=False)  # fmt: skip


@tokens.command("list")
def token_list(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List your API tokens (never their values)."""
    items = _call(url, "GET", "/api/tokens").json()
    if as_json:
        out.print_json(json.dumps(items))
        return
    for t in items:
        used = (t["last_used_at"] or "never")[:19]
        out.print(f"{t['id']}  {t['label'] or '-':<24} made {t['created_at'][:19]}  "
                  f"last used {used}", highlight=False)  # fmt: skip


@tokens.command("rm")
def token_rm(token_id: str, url: UrlOpt = None) -> None:
    """Revoke one of your API tokens."""
    _call(url, "DELETE", f"/api/tokens/{quote(token_id, safe='')}")
    out.print(f"revoked token {token_id}")
