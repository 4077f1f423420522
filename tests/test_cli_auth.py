"""The CLI's access: ``virtlab login`` keeps a token (mode 0600), every command sends it,
``virtlab logout`` revokes it; ``virtlab user …`` manages users and tokens."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from support.server import Server

VIRTLAB = str(Path(sys.executable).with_name("virtlab"))


def run(server: Server, config: Path, *args: str, stdin: str = "", token: str = "") -> (
    subprocess.CompletedProcess
):  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "VIRTLAB_TOKEN"}
    env.update({"VIRTLAB_URL": server.url, "XDG_CONFIG_HOME": str(config), "COLUMNS": "200"})
    if token:
        env["VIRTLAB_TOKEN"] = token
    return subprocess.run(
        [VIRTLAB, *args], input=stdin, capture_output=True, text=True, timeout=120, env=env
    )


def test_login_keeps_a_private_token_that_later_commands_use(
    server: Server, tmp_path: Path
) -> None:
    config = tmp_path / "config"
    refused = run(server, config, "image", "list")
    assert refused.returncode == 1
    assert "virtlab login" in refused.stderr and "HTTP 401" in refused.stderr, refused.stderr

    wrong = run(server, config, "login", "--password-stdin", stdin="not-it\n")
    assert wrong.returncode == 1 and "wrong user name or password" in wrong.stderr

    done = run(server, config, "login", "--user", "admin", "--password-stdin",
               stdin=f"{server.admin_password}\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "logged in" in done.stdout
    path = config / "virtlab" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    kept = json.loads(path.read_text())[server.url]
    assert kept["user"] == "admin" and kept["token"].startswith("vl_")

    assert run(server, config, "image", "list").returncode == 0
    listed = run(server, config, "user", "token", "list", "--json")
    assert any(t["label"].startswith("cli@") for t in json.loads(listed.stdout))

    out = run(server, config, "logout")
    assert out.returncode == 0 and "logged out" in out.stdout
    assert server.url not in json.loads(path.read_text())
    with server.client(token=kept["token"]) as client:
        assert client.get("/api/me").status_code == 401  # revoked on the server too
    assert run(server, config, "image", "list").returncode == 1


def test_users_and_tokens_through_the_cli(server: Server, tmp_path: Path) -> None:
    config, admin = tmp_path / "config", server.token
    made = run(server, config, "user", "add", "carla", token=admin)
    assert made.returncode == 0, made.stderr
    password = made.stdout.split("password: ")[1].split()[0]
    listed = json.loads(run(server, config, "user", "list", "--json", token=admin).stdout)
    assert {"name": "carla", "role": "user"}.items() <= {
        k: v for u in listed if u["name"] == "carla" for k, v in u.items()
    }.items()

    carla = server.login("carla", password)
    refused = run(server, config, "user", "list", token=carla)
    assert refused.returncode == 1 and "ask an admin" in refused.stderr

    changed = run(server, config, "user", "passwd", "--password-stdin",
                  stdin=f"{password}\nanother-password\n", token=carla)  # fmt: skip
    assert changed.returncode == 0, changed.stderr
    server.login("carla", "another-password")

    made = run(server, config, "user", "token", "create", "--label", "ci", token=carla)
    value = made.stdout.strip()
    assert made.returncode == 0 and value.startswith("vl_"), made.stderr
    token_id = value.split("_")[1]
    assert token_id in run(server, config, "user", "token", "list", token=carla).stdout
    assert run(server, config, "user", "token", "rm", token_id, token=carla).returncode == 0
    gone = run(server, config, "image", "list", token=value)
    assert gone.returncode == 1 and "unknown, expired or revoked" in gone.stderr

    assert run(server, config, "user", "rm", "carla", token=admin).returncode == 0
