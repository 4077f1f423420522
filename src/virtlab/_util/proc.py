"""Running external tools: argv lists only (never a shell), optional resource limits.

Limits are applied with util-linux ``prlimit`` wrapped around the command, so nothing runs
between ``fork`` and ``exec`` in our process (``preexec_fn`` is unsafe with threads). Every tool
also runs under ``setpriv --pdeathsig KILL``: if the server dies, its qemu-img children die with
it instead of writing on into a staging directory the next start-up sweeps.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Completed", "Limits", "run", "stream_lines"]

_TAIL = 4000


@dataclass(frozen=True)
class Limits:
    """Resource limits for one child process; ``None`` leaves a limit as inherited."""

    cpu_seconds: int | None = None
    address_space: int | None = None

    def prefix(self) -> list[str]:
        flags = []
        if self.cpu_seconds is not None:
            flags.append(f"--cpu={self.cpu_seconds}")
        if self.address_space is not None:
            flags.append(f"--as={self.address_space}")
        return ["prlimit", *flags, "--"] if flags else []


_TIED = ["setpriv", "--pdeathsig", "KILL", "--"]


def _argv(argv: Sequence[str], limits: Limits | None) -> list[str]:
    return [*_TIED, *(limits.prefix() if limits else []), *argv]


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def stderr_tail(self) -> str:
        return self.stderr[-_TAIL:].strip()


def _env() -> dict[str, str]:
    # Stable, parseable messages from the tools whatever the user's locale.
    return {**os.environ, "LC_ALL": "C"}


def run(
    argv: Sequence[str], *, limits: Limits | None = None, timeout: float | None = None
) -> Completed:
    """Run ``argv`` to completion and return its output; never raises on a non-zero exit."""
    full = _argv(argv, limits)
    proc = subprocess.run(
        full,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        env=_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return Completed(tuple(argv), proc.returncode, proc.stdout, proc.stderr)


def stream_lines(
    argv: Sequence[str],
    on_chunk: Callable[[str], None],
    *,
    limits: Limits | None = None,
) -> Completed:
    """Run ``argv``, handing each piece of stdout (split on ``\\r`` or ``\\n``) to ``on_chunk``.

    Used for ``qemu-img convert -p``, which redraws its progress with carriage returns.
    """
    full = _argv(argv, limits)
    # stderr goes to a file so a chatty tool can never block on a full pipe we are not reading.
    with (
        tempfile.TemporaryFile() as errfile,
        subprocess.Popen(
            full,
            stdout=subprocess.PIPE,
            stderr=errfile,
            stdin=subprocess.DEVNULL,
            env=_env(),
            bufsize=0,
        ) as proc,
    ):
        assert proc.stdout is not None
        pending = b""
        out: list[str] = []
        while chunk := proc.stdout.read(4096):
            pending += chunk
            *pieces, pending = pending.replace(b"\r", b"\n").split(b"\n")
            for piece in pieces:
                text = piece.decode(errors="replace").strip()
                if text:
                    out.append(text)
                    on_chunk(text)
        proc.wait()
        errfile.seek(0)
        stderr = errfile.read().decode(errors="replace")
    return Completed(tuple(argv), proc.returncode, "\n".join(out[-50:]), stderr)
