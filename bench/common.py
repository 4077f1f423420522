"""What the benchmarks share: a real server, upload clients, stage and memory samplers, files.

Cache policy (the same for both sides of every ratio): page caches are never dropped. Before
each timed run the source file is read once in full (so it is in the page cache, as a file just
written or just uploaded would be) and ``sync`` is called (so no dirty pages of an earlier run
are written back during this one). Destinations are removed after each run. Nothing of this is
timed.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import psutil
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

if TYPE_CHECKING:
    from support.server import Server

__all__ = [
    "CLIENTS",
    "DEFAULT_CLIENT",
    "GiB",
    "MiB",
    "Reply",
    "RssSampler",
    "StagePoller",
    "prepare_cache",
    "running_server",
    "server_env",
    "upload",
    "write_random",
]

MiB = 1 << 20
GiB = 1 << 30
REPO = Path(__file__).resolve().parents[1]
_CHUNK = 1 * MiB


# -- the server ---------------------------------------------------------------------------------


# The Authorization header for the server ``running_server`` started (the bench runs one at a
# time): the uploaders and the stage poller below send it with every request.
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


# -- files --------------------------------------------------------------------------------------


def write_random(path: Path, size: int, *, total: int | None = None, head: bytes = b"") -> Path:
    """``size`` bytes of incompressible data (AES-CTR keystream) at the start of ``path``.

    ``total`` makes the file that long, sparse past ``size``; ``head`` replaces the first bytes.
    """
    encryptor = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    zeros = bytes(16 * MiB)
    with path.open("wb") as out:
        out.write(head)
        left = size - len(head)
        while left > 0:
            block = encryptor.update(zeros[: min(left, len(zeros))])
            out.write(block)
            left -= len(block)
        if total is not None:
            out.truncate(total)
    return path


def prepare_cache(*paths: Path) -> None:
    """Read ``paths`` once in full into the page cache, then ``sync``: see the module's doc."""
    buf = bytearray(8 * MiB)
    for path in paths:
        with path.open("rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    os.sync()


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


# -- upload clients -----------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Sent = Callable[[], None]


def _target(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return parts.hostname or "127.0.0.1", parts.port or 80, path


def put_sendfile(url: str, path: Path, on_sent: Sent) -> Reply:
    """Hand-written request head, then the file with ``socket.sendfile`` (zero-copy)."""
    host, port, target = _target(url)
    size = path.stat().st_size
    head = (
        f"PUT {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in AUTH.items())
        + "Connection: close\r\n\r\n"
    )
    with socket.create_connection((host, port)) as sock:
        try:
            sock.sendall(head.encode())
            with path.open("rb") as f:
                sock.sendfile(f)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early (a refusal): read its answer
        on_sent()
        response = http.client.HTTPResponse(sock)
        response.begin()
        return Reply(response.status, response.read())


def put_http_client(url: str, path: Path, on_sent: Sent) -> Reply:
    """The standard library's ``http.client``, reading the file in 1 MiB blocks."""
    host, port, target = _target(url)
    conn = http.client.HTTPConnection(host, port, blocksize=_CHUNK)
    try:
        with path.open("rb") as f:
            conn.request(
                "PUT",
                target,
                body=f,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(path.stat().st_size),
                    **AUTH,
                },
            )
        on_sent()
        response = conn.getresponse()
        return Reply(response.status, response.read())
    finally:
        conn.close()


def put_httpx(url: str, path: Path, on_sent: Sent) -> Reply:
    """``httpx`` with a generator of 1 MiB chunks (as a Python program would upload)."""

    def chunks() -> Iterator[bytes]:
        with path.open("rb") as f:
            while block := f.read(_CHUNK):
                yield block
        on_sent()

    with httpx.Client(timeout=None) as client:
        response = client.put(
            url,
            content=chunks(),
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(path.stat().st_size),
                **AUTH,
            },
        )
        return Reply(response.status_code, response.content)


def put_curl(url: str, path: Path, on_sent: Sent) -> Reply:
    """``curl -T`` (no ``Expect: 100-continue`` round trip). When it finished sending is not
    known, so ``on_sent`` is called at once."""
    on_sent()
    done = subprocess.run(
        ["curl", "-sS", "-H", "Expect:", "-H", "Content-Type: application/octet-stream",
         *[a for k, v in AUTH.items() for a in ("-H", f"{k}: {v}")],
         "-T", str(path), "-o", "-", "-w", "\n%{http_code}", url],
        capture_output=True, check=True,
    )  # fmt: skip
    body, _, code = done.stdout.rpartition(b"\n")
    return Reply(int(code), body)


CLIENTS: dict[str, Callable[[str, Path, Sent], Reply]] = {
    "sendfile": put_sendfile,
    "http.client": put_http_client,
    "httpx": put_httpx,
    "curl": put_curl,
}
DEFAULT_CLIENT = "sendfile"


def upload(client: str, url: str, path: Path, on_sent: Sent = lambda: None) -> Reply:
    return CLIENTS[client](url, path, on_sent)


def new_import_id() -> str:
    return f"bench-{uuid.uuid4().hex[:20]}"


# -- samplers -----------------------------------------------------------------------------------


@dataclass
class StagePoller:
    """Polls ``GET /api/imports/{id}`` and notes when each stage was first seen.

    Times are ``time.perf_counter()`` values. ``after`` (an event) holds the polling back until
    it is set: the upload benchmark polls only once the client has sent its last byte, so the
    polling costs the server nothing while it receives.
    """

    base_url: str
    import_id: str
    interval: float = 0.02
    after: threading.Event | None = None
    first_seen: dict[str, float] = field(default_factory=dict)
    finished_at: float | None = None
    last: dict[str, Any] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> StagePoller:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.after is not None:
            self.after.set()
        if self._thread is not None:
            self._thread.join(30)

    def wait_left_upload(self, timeout: float = 600) -> float | None:
        """Block until the import is past its upload stage; when that was first seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            moment = self.left_upload
            if moment is not None:
                return moment
            time.sleep(self.interval / 2)
        return self.left_upload

    @property
    def left_upload(self) -> float | None:
        later = [t for stage, t in self.first_seen.items() if stage != "upload"]
        if self.finished_at is not None:
            later.append(self.finished_at)
        return min(later) if later else None

    def _run(self) -> None:
        if self.after is not None:
            self.after.wait()
        host, port, _ = _target(self.base_url)
        conn = http.client.HTTPConnection(host, port, timeout=30)
        path = f"/api/imports/{self.import_id}"
        try:
            while not self._stop.is_set():
                try:
                    conn.request("GET", path, headers=AUTH)
                    response = conn.getresponse()
                    body = response.read()
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=30)
                    continue
                now = time.perf_counter()
                if response.status == 200:
                    doc = json.loads(body)
                    self.last = doc
                    self.first_seen.setdefault(doc["stage"], now)
                    if doc["state"] != "running" and self.finished_at is None:
                        self.finished_at = now
                        return
                self._stop.wait(self.interval)
        finally:
            conn.close()


@dataclass
class RssSampler:
    """Samples the resident memory of a process and of its children every ``interval`` s."""

    pid: int
    interval: float = 0.05
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, own, with kids)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RssSampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self.sample()

    def sample(self) -> None:
        try:
            proc = psutil.Process(self.pid)
            own = proc.memory_info().rss
            kids = 0
            for child in proc.children(recursive=True):
                with suppress(psutil.Error):
                    kids += child.memory_info().rss
        except psutil.Error:
            return
        self.samples.append((time.perf_counter(), own, own + kids))

    def peak(self, start: float = float("-inf"), end: float = float("inf")) -> tuple[int, int]:
        """The highest (own, with children) RSS sampled between ``start`` and ``end``."""
        inside = [s for s in self.samples if start <= s[0] <= end] or self.samples
        return max(s[1] for s in inside), max(s[2] for s in inside)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


# -- formatting ---------------------------------------------------------------------------------


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e6:,.0f} MB/s"


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
