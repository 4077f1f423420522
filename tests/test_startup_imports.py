"""What start-up imports: the server and the CLI leave out what only some commands, requests or
catalogs need (docs/architecture.md, "Start-up"). Each check runs in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import virtlab

SRC = str(Path(virtlab.__file__).parents[1])


def _modules(code: str) -> set[str]:
    """The names of the modules loaded once ``code`` has run."""
    code += "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_the_server_built_over_a_catalog_at_head_leaves_out_what_it_may_never_use(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    made = (
        "from virtlab.catalog import Catalog\n"
        f"Catalog('sqlite:///{data}/catalog.sqlite3').migrate()\n"
    )
    data.mkdir()
    _modules(made)  # the catalog exists and is at the newest migration
    loaded = _modules(
        "from virtlab.api import create_app\n"
        "from virtlab.settings import Settings\n"
        f"app = create_app(Settings(data_dir={str(data)!r}))\n"
        "app.state.runtime.catalog.migrate()\n"
    )
    assert "virtlab.runtime" in loaded and "fastapi" in loaded  # it did build the server
    for absent in (
        "alembic",  # the catalog is at head
        "oslo_utils",  # no image inspected
        "libvirt",  # no libvirt host connected
        "virtlab.hosts.driver",
        "cryptography.hazmat.primitives.ciphers",  # no VNC ticket checked
        "httpx",  # the CLI's client
        "virtlab.cli.client",
    ):
        assert absent not in loaded, absent


def test_the_cli_leaves_out_the_server_stack() -> None:
    loaded = _modules("from virtlab.cli.main import build\nbuild()\n")
    assert "virtlab.cli.images" in loaded and "httpx" in loaded  # it did build the commands
    for absent in (
        "fastapi", "sqlalchemy", "alembic", "pydantic", "pydantic_settings", "uvicorn",
        "websockets", "virtlab.settings", "virtlab.nodes.qemu.probe", "virtlab.runtime",
    ):  # fmt: skip
        assert absent not in loaded, absent


def test_virtlab_serve_does_not_build_the_client_commands() -> None:
    loaded = _modules(
        "import contextlib, sys\n"
        "sys.argv = ['virtlab', 'serve', '--help']\n"
        "from virtlab.cli.main import main\n"
        "with contextlib.suppress(SystemExit):\n"
        "    main()\n"
    )
    assert "virtlab.cli.serve" in loaded
    for absent in ("httpx", "virtlab.cli.client", "virtlab.cli.images", "virtlab.cli.doctor"):
        assert absent not in loaded, absent
