"""A throw-away PostgreSQL server on 127.0.0.1, started by the tests from Debian's package.

``initdb`` refuses to run as root, so when the tests run as root the cluster belongs to the
``postgres`` user the package creates. The server is stopped by its pid (``pg_ctl stop``) and its
directory removed.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from support.server import free_port

__all__ = ["PostgresServer", "postgres_bin"]


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@dataclass
class PostgresServer:
    root: Path
    port: int
    bindir: Path

    @property
    def url(self) -> str:
        return f"postgresql://virtlab@127.0.0.1:{self.port}/virtlab"

    @classmethod
    def start(cls) -> PostgresServer:
        bindir = postgres_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed: `make setup` installs it")
        root = Path(tempfile.mkdtemp(prefix="virtlab-pg-"))
        run_as = _user_prefix(root)
        data = root / "data"
        port = free_port()
        _run([*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "virtlab",
              "--auth=trust", "-E", "UTF8", "--no-sync"])  # fmt: skip
        _run([
            *run_as, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w",
            "-o", f"-k {root} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        ])  # fmt: skip
        server = cls(root, port, bindir)
        _run([*run_as, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port),
              "-U", "virtlab", "virtlab"])  # fmt: skip
        return server

    def stop(self) -> None:
        run_as = _user_prefix(self.root)
        subprocess.run(
            [*run_as, str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate",
             "-w", "stop"],
            capture_output=True, check=False,
        )  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)


def _user_prefix(root: Path) -> list[str]:
    if os.geteuid() != 0:
        return []
    user = pwd.getpwnam("postgres")
    os.chown(root, user.pw_uid, user.pw_gid)
    return ["runuser", "-u", "postgres", "--"]


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr or done.stdout}")
