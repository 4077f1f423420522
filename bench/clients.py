"""Upload clients: the four ways the benchmarks ``PUT`` a file, each with the server's token."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.files import MiB
from bench.server import AUTH

__all__ = ["CLIENTS", "DEFAULT_CLIENT", "Reply", "Sent", "new_import_id", "upload"]

_CHUNK = 1 * MiB


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
