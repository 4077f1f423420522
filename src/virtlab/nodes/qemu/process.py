"""QEMU processes: launched in their own session so they outlive the server, watched by pidfd.

A node's QEMU writes its pid file into the node's directory. A restarted server re-adopts it
from there, after checking that the pid still belongs to a QEMU started for that directory (a
recycled pid must never be mistaken for a node). Exit is observed through a pidfd, for our own
children and for adopted processes alike: no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from virtlab.errors import ToolFailure

__all__ = ["LaunchFailure", "QemuProcess", "log_tail", "qemu_pid_for"]


class LaunchFailure(ToolFailure):
    """QEMU exited while starting; carries its exit code, argv and the tail of its log."""


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


@dataclass
class QemuProcess:
    pid: int
    log: Path
    child: bool = False  # we are its parent, so we reap it and learn its exit status
    _pidfd: int | None = field(default=None, repr=False)
    _exited: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    returncode: int | None = None  # negative: killed by that signal

    @classmethod
    def launch(
        cls, argv: Sequence[str], *, log: Path, pass_fds: Sequence[tuple[int, int]] = ()
    ) -> QemuProcess:
        """Start ``argv`` in a new session (it survives the server), output into ``log``;
        ``pass_fds``: (our descriptor, the child's number) pairs QEMU inherits.

        ``posix_spawn`` rather than ``subprocess.Popen``: a node is meant to outlive the
        object that started it, which Popen reports as a leak. Our own descriptors are all
        close-on-exec (PEP 446), so QEMU inherits none of the server's sockets but those
        placed by ``dup2`` (which clears close-on-exec on the copy). A source must not be
        numbered like any target (:class:`virtlab.nodes.qemu.sockets.NodeSockets` sees to it).
        """
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2),
            *((os.POSIX_SPAWN_DUP2, ours, theirs) for ours, theirs in pass_fds),
        ]
        try:
            pid = os.posix_spawnp(argv[0], list(argv), dict(os.environ), file_actions=actions,
                                  setsid=True)  # fmt: skip
        except OSError as exc:
            raise LaunchFailure(f"cannot run {argv[0]}: {exc}", argv) from exc
        proc = cls(pid=pid, log=log, child=True)
        proc._watch()
        return proc

    @classmethod
    def adopt(cls, pidfile: Path, node_dir: Path, log: Path) -> QemuProcess | None:
        """The QEMU still running for ``node_dir``, or None."""
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        if not _is_qemu_for(pid, node_dir):
            return None
        proc = cls(pid=pid, log=log)
        try:
            proc._watch()
        except ProcessLookupError:
            return None
        return proc

    def _watch(self) -> None:
        self._pidfd = os.pidfd_open(self.pid)
        asyncio.get_running_loop().add_reader(self._pidfd, self._on_exit)

    def _on_exit(self) -> None:
        loop = asyncio.get_running_loop()
        if self._pidfd is not None:
            loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self.child:
            _, status = os.waitpid(self.pid, 0)  # it has exited: reap it, do not block
            self.returncode = os.waitstatus_to_exitcode(status)
        self._exited.set()

    @property
    def alive(self) -> bool:
        return not self._exited.is_set()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait for the process to end; True if it did within ``timeout``."""
        try:
            await asyncio.wait_for(self._exited.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def signal(self, sig: int = signal.SIGKILL) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def forget(self) -> None:
        """Stop watching (the server is shutting down and leaves the node running)."""
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


def qemu_pid_for(node_dir: Path) -> int | None:
    """The pid of a QEMU still running for ``node_dir`` (by its pid file), or None."""
    try:
        pid = int((node_dir / "qemu.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_qemu_for(pid, node_dir) else None


def _is_qemu_for(pid: int, node_dir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if not cmdline or b"qemu-system" not in Path(cmdline[0].decode(errors="replace")).name.encode():
        return False
    needle = str(node_dir).encode()
    return any(needle in arg for arg in cmdline)
