"""A real virtlab server in a subprocess, on a loopback port, over a data directory of the test's.

Started with the installed ``virtlab serve`` command, as a user would; ready when uvicorn says
so on stderr (an event, not a sleep); stopped by its pid.
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

__all__ = ["Server", "free_port"]

# uvicorn logs "Application startup complete" before it binds its socket; this line comes after.
_READY = "Uvicorn running on"


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

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Server:
        self.port = free_port()
        self._ready = ready = threading.Event()
        env = {**os.environ, **self.env}
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
        return self

    def _drain(self, proc: subprocess.Popen, ready: threading.Event) -> None:
        # Each process has its own event: a previous process's thread ending late must not
        # wake the waiter of the next start.
        assert proc.stderr is not None
        with proc.stderr:
            for line in proc.stderr:
                self.log.append(line.rstrip())
                if _READY in line:
                    ready.set()
        ready.set()  # exited: wake the waiter, which checks poll()

    def client(self, **kwargs) -> httpx.Client:  # type: ignore[no-untyped-def]
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 120), **kwargs)

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
