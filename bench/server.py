"""The benchmarks' server: ``virtlab serve`` (the tests' helper), and where its nodes live."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from support.server import Server

__all__ = ["AUTH", "REPO", "OnServer", "running_server", "server_env"]

REPO = Path(__file__).resolve().parents[1]


# The Authorization header for the server ``running_server`` started (the bench runs one at a
# time): the upload clients (``bench.clients``) and the stage poller (``bench.sampling``) send it
# with every request.
AUTH: dict[str, str] = {}


@contextmanager
def running_server(data_dir: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    """``virtlab serve`` on a free loopback port (the tests' helper), stopped by its pid after."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from support.server import Server  # importable once tests/ is on the path

    server = Server(data_dir, env=env or {}).start()
    AUTH.clear()
    AUTH.update(server.headers)
    try:
        yield server
    finally:
        server.stop()
        AUTH.clear()


def server_env(src: Path | None) -> dict[str, str]:
    """The environment that runs the server from another source tree (to measure a change)."""
    if src is None:
        return {}
    if not (src / "virtlab" / "__init__.py").is_file():
        raise SystemExit(f"{src} holds no virtlab package (give the src/ directory)")
    return {"PYTHONPATH": str(src.resolve())}


@dataclass
class OnServer:
    """A benchmark's server with the boot disk imported: where its nodes live."""

    server: Server
    image: str  # the boot disk, imported

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def headers(self) -> dict[str, str]:
        return self.server.headers

    @property
    def data(self) -> Path:
        return self.server.data_dir

    def node_dir(self, node_id: str) -> Path:
        return self.data / "nodes" / node_id

    def qemu_pid(self, node_id: str) -> int:
        return int((self.node_dir(node_id) / "qemu.pid").read_text())
