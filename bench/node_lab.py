"""The node benchmarks' lab (one server over two bases, the boot disk imported; see
``bench.nodes``) and the serial-console helpers they and the lab benchmarks share."""

from __future__ import annotations

import contextlib
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.files import write_random
from bench.server import OnServer, running_server
from virtlab.devtools.bootdisk import BOOT_MARKER, build_boot_disk

__all__ = ["RAM_MB", "GuestFailed", "Lab", "node_lab"]

RAM_MB = 128
_MARKER = BOOT_MARKER.encode()
_PANIC = re.compile(rb"Kernel panic - not syncing: ([^\r\n]*)[\r\n]")


@dataclass
class Lab(OnServer):
    small_base: str  # catalog names of the two bases
    big_base: str
    warmed: bool = False  # a node has booted on this server already
    _serial: int = 0

    def name(self, prefix: str) -> str:
        self._serial += 1
        return f"{prefix}{self._serial}"

    def base_path(self, image: str) -> Path:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=30) as client:
            reply = client.get(f"/api/images/{image}")
            reply.raise_for_status()
        return self.data / "images" / reply.json()["path"]

    def dispose(self, node_id: str) -> None:
        """Kill (if it runs) and delete a node; not timed."""
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=120) as client:
            state = client.get(f"/api/nodes/{node_id}").json().get("state")
            if state in ("running", "suspended", "starting", "stopping"):
                client.post(f"/api/nodes/{node_id}/kill").raise_for_status()
            client.delete(f"/api/nodes/{node_id}").raise_for_status()


@contextlib.contextmanager
def node_lab(
    workdir: Path, *, small_size: int, big_size: int, env: dict[str, str] | None = None
) -> Iterator[Lab]:
    """The server over a data directory holding the two bases, with the boot disk imported.
    Every node's QEMU is killed at the end, whatever happened."""
    data = workdir / "data"
    images = data / "images"
    images.mkdir(parents=True, exist_ok=True)
    raw = write_random(workdir / "small.raw", small_size)
    small, big = "base-small.qcow2", "base-big.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(images / small)],
        check=True,
    )
    raw.unlink()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(images / big), str(big_size)], check=True
    )
    disk = build_boot_disk(workdir / "boot.img")
    with running_server(data, env) as server:
        try:
            with httpx.Client(base_url=server.url, headers=server.headers, timeout=300) as client:
                reply = client.put("/api/images/boot.img", content=disk.read_bytes())
                reply.raise_for_status()
                names = {i["name"] for i in client.get("/api/images").json()}
            missing = {small, big} - names
            if missing:
                raise RuntimeError(f"the start-up scan did not register {sorted(missing)}")
            disk.unlink()
            yield Lab(server, reply.json()["name"], small, big)
        finally:
            server.kill_nodes()
            disk.unlink(missing_ok=True)


def _ws_url(base_url: str, node: dict[str, Any]) -> str:
    return base_url.replace("http", "ws", 1) + node["consoles"]["serial"]["ws"]


def _spec(name: str, image: str, ram_mb: int = RAM_MB) -> dict[str, Any]:
    return {"name": name, "image": image, "ram_mb": ram_mb}


class GuestFailed(RuntimeError):
    """A guest printed a kernel panic on its serial console: it will never show the marker."""


async def _until_marker(ws: Any, name: str) -> None:
    tail = b""
    while _MARKER not in tail:
        data = await ws.recv()
        tail = (tail + (data if isinstance(data, bytes) else data.encode()))[-8192:]
        panic = _PANIC.search(tail)
        if panic:
            raise GuestFailed(f"{name}: guest kernel panic: {panic[1].decode(errors='replace')}")
