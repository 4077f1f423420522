"""A real virtlab server in a subprocess, on a loopback port, over a data directory of the test's.

Started with the installed ``virtlab serve`` command, as a user would; ready when uvicorn says
so on stderr (an event, not a sleep); stopped by its pid.

Its first admin gets :data:`ADMIN_PASSWORD`; once started it logs in for an API token
(``token``), which :meth:`Server.client`, :attr:`Server.headers` (for WebSockets) and
:attr:`Server.cli_env` (for the CLI) carry.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx

__all__ = ["ADMIN_PASSWORD", "SSL_CONTEXT", "Server", "free_port"]

ADMIN_PASSWORD = "test-admin-password"

# uvicorn logs "Application startup complete" before it binds its socket; this line comes after.
_READY = "Uvicorn running on"

# httpx's default TLS context (certifi's CAs), made once: each client would otherwise load the
# CA bundle again (~80 ms a client on a loaded 2-core machine, several times in every test),
# though the servers here speak plain HTTP.
SSL_CONTEXT = httpx.create_ssl_context()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen | None = None
    log: list[str] = field(default_factory=list)
    token: str = ""  # the admin's API token, made at each start

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Server:
        self.port = free_port()
        self._ready = ready = threading.Event()
        env = {**os.environ, "VIRTLAB_ADMIN_PASSWORD": ADMIN_PASSWORD, **self.env}
        env.pop("VIRTLAB_TOKEN", None)
        argv = [
            str(Path(sys.executable).with_name("virtlab")), "serve", "--host", "127.0.0.1",
            "--port", str(self.port), "--data-dir", str(self.data_dir), "--log-level", "info",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._drain, args=(self.proc, ready), daemon=True).start()
        if not ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("virtlab serve did not start:\n" + "\n".join(self.log[-40:]))
        if self.admin_password is not None and not self._token_still_good():
            self.token = self.login("admin", self.admin_password)
        return self

    def _token_still_good(self) -> bool:
        """After a restart over the same data directory the admin's token is still in the
        catalog: one cheap request checks it, where a login is an argon2 hash (0.3 s and more
        on a loaded machine, some sixty restarts in the suite)."""
        if not self.token:
            return False
        with self.client(timeout=60) as client:
            reply = client.get("/api/me")
        return reply.status_code == 200 and reply.json().get("name") == "admin"

    @property
    def admin_password(self) -> str | None:
        """The first admin's password, unless the test's ``env`` leaves it to be generated."""
        return self.env.get("VIRTLAB_ADMIN_PASSWORD", ADMIN_PASSWORD) or None

    def login(self, name: str, password: str, kind: str = "api") -> str:
        """A bearer value for ``name``."""
        with httpx.Client(base_url=self.url, timeout=60, verify=SSL_CONTEXT) as client:
            reply = client.post(
                "/api/login", json={"name": name, "password": password, "kind": kind}
            )
            reply.raise_for_status()
            return reply.json()["token"]

    @property
    def headers(self) -> dict[str, str]:
        """``Authorization`` for the admin's token: for httpx clients and WebSockets."""
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def cli_env(self) -> dict[str, str]:
        """The environment for the ``virtlab`` CLI to talk to this server as the admin."""
        return {"VIRTLAB_URL": self.url, "VIRTLAB_TOKEN": self.token}

    def ws_url(self, path: str) -> str:
        return self.url.replace("http", "ws", 1) + path

    def _drain(self, proc: subprocess.Popen, ready: threading.Event) -> None:
        # Each process has its own event: a previous process's thread ending late must not
        # wake the waiter of the next start.
        assert proc.stderr is not None
        with proc.stderr:
            for line in proc.stderr:
                self.log.append(line.rstrip())
                if _READY in line:
                    ready.set()
        # Its stderr ended: the process is ending. Reap it first, so that the waiter's poll()
        # sees the exit (and reports the log) rather than trying to log in to nothing.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        ready.set()

    def client(self, token: str | None = None, **kwargs) -> httpx.Client:  # type: ignore[no-untyped-def]
        """An httpx client as the admin (or as the holder of ``token``; ``""``: anonymous)."""
        return httpx.Client(
            base_url=self.url, timeout=kwargs.pop("timeout", 120), verify=SSL_CONTEXT,
            headers={**self._auth(token), **kwargs.pop("headers", {})}, **kwargs,
        )  # fmt: skip

    def async_client(self, token: str | None = None, **kwargs) -> httpx.AsyncClient:  # type: ignore[no-untyped-def]
        return httpx.AsyncClient(
            base_url=self.url, timeout=kwargs.pop("timeout", 120), verify=SSL_CONTEXT,
            headers={**self._auth(token), **kwargs.pop("headers", {})}, **kwargs,
        )  # fmt: skip

    def _auth(self, token: str | None) -> dict[str, str]:
        value = self.token if token is None else token
        return {"Authorization": f"Bearer {value}"} if value else {}

    def kill(self) -> None:
        """SIGKILL to the server alone, as the OOM killer or ``kill -9`` would."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill_nodes(self) -> None:
        """SIGKILL every node's QEMU by its pid file, whatever the server's state: tests that
        start nodes call this last, so no guest outlives them."""
        for pidfile in (self.data_dir / "nodes").glob("*/qemu.pid"):
            with contextlib.suppress(ProcessLookupError, ValueError, OSError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(15)
