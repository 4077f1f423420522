"""Boot a disk under real QEMU (TCG) and talk to the guest over its serial port, for tests.

::

    with Guest.start(disk, bus="virtio") as guest:
        guest.wait_for(BOOT_MARKER)
        assert guest.run("echo $((6*7))") == "42"
        guest.send_line("poweroff -f")
        assert guest.wait_exit() == 0

QEMU connects to unix sockets this helper listens on (serial, and QMP when asked for), so no
file has to appear and nothing polls: every wait is a ``select`` on the sockets and on a
pidfd of the QEMU process, bounded by a deadline. :meth:`Guest.stop` (also run on leaving the
``with`` block) kills QEMU by its pid if it still runs and removes the scratch directory.
"""

from __future__ import annotations

import codecs
import itertools
import json
import os
import re
import select
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["QEMU", "Guest", "GuestError", "qemu_argv"]

QEMU = os.environ.get("VIRTLAB_TEST_QEMU", "qemu-system-x86_64")
BUSES = ("ide", "virtio", "sata", "none")


class GuestError(AssertionError):
    """The guest did not do what was waited for; the message carries the serial tail."""


def _drive_args(disk: Path, bus: str, snapshot: bool) -> list[str]:
    opts = f"file={disk},format=raw" + (",snapshot=on" if snapshot else "")
    if bus == "ide":
        return ["-drive", f"{opts},if=ide,index=0"]
    if bus == "virtio":
        return ["-drive", f"{opts},if=virtio"]
    if bus == "sata":
        return [
            "-device", "ahci,id=ahci0",
            "-drive", f"{opts},if=none,id=disk0",
            "-device", "ide-hd,drive=disk0,bus=ahci0.0",
        ]  # fmt: skip
    if bus == "none":
        return []
    raise ValueError(f"bus must be one of {BUSES}, not {bus!r}")


def qemu_argv(
    disk: Path | None,
    *,
    serial_socket: Path,
    qmp_socket: Path | None = None,
    bus: str = "ide",
    memory_mib: int = 256,
    snapshot: bool = True,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The QEMU command line: TCG, no default devices but a VGA card, serial to our socket."""
    argv = [QEMU, "-accel", "tcg", "-m", str(memory_mib), "-nodefaults", "-no-reboot"]
    argv += ["-vga", "std"]
    if "-vnc" not in extra_args and "-display" not in extra_args:
        argv += ["-display", "none"]
    argv += ["-chardev", f"socket,id=s0,path={serial_socket},server=off", "-serial", "chardev:s0"]
    if qmp_socket is not None:
        argv += ["-chardev", f"socket,id=q0,path={qmp_socket},server=off"]
        argv += ["-mon", "chardev=q0,mode=control"]
    if disk is not None:
        argv += _drive_args(Path(disk).resolve(), bus, snapshot)
    return [*argv, *extra_args]


class Guest:
    """One QEMU process with its serial stream (and optionally QMP)."""

    def __init__(self, workdir: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.workdir = workdir
        self.proc = proc
        self.log_path = log
        self.serial: socket.socket | None = None
        self.qmp_sock: socket.socket | None = None
        self._qmp_buf = b""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.output = ""  # everything read from the serial port so far
        self.cursor = 0  # wait_for searches from here and moves it past each match
        self._counter = itertools.count(1)
        try:
            self._pidfd: int | None = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            self._pidfd = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    def start(
        cls,
        disk: Path | None,
        *,
        bus: str = "ide",
        memory_mib: int = 256,
        snapshot: bool = True,
        qmp: bool = False,
        extra_args: Sequence[str] = (),
        timeout: float = 30.0,
    ) -> Guest:
        """Start QEMU on ``disk`` (attached as ``bus``; ``snapshot`` keeps the file untouched)."""
        workdir = Path(tempfile.mkdtemp(prefix="vlguest-"))  # short: unix socket paths <108
        listeners = {"serial": _listen(workdir / "serial.sock")}
        if qmp:
            listeners["qmp"] = _listen(workdir / "qmp.sock")
        argv = qemu_argv(
            disk,
            serial_socket=workdir / "serial.sock",
            qmp_socket=workdir / "qmp.sock" if qmp else None,
            bus=bus,
            memory_mib=memory_mib,
            snapshot=snapshot,
            extra_args=extra_args,
        )
        log = workdir / "qemu.log"
        try:
            with log.open("wb") as log_file:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
                )
        except BaseException:
            for listener in listeners.values():
                listener.close()
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        guest = cls(workdir, proc, log)
        try:
            deadline = time.monotonic() + timeout
            for name, listener in listeners.items():
                conn = guest._accept(listener, deadline)
                setattr(guest, "serial" if name == "serial" else "qmp_sock", conn)
            if qmp:
                guest._qmp_read(lambda m: "QMP" in m, deadline)
                guest.qmp("qmp_capabilities")
        except BaseException:
            guest.stop()
            raise
        finally:
            for listener in listeners.values():
                listener.close()
        return guest

    # --- waiting ------------------------------------------------------------------------

    def _accept(self, listener: socket.socket, deadline: float) -> socket.socket:
        while True:
            if listener in self._select([listener], deadline):
                conn, _ = listener.accept()
                conn.setblocking(False)
                return conn

    def _select(self, socks: list[socket.socket], deadline: float) -> list[Any]:
        """Wait until one of ``socks`` is readable; raise if QEMU exits or time runs out."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GuestError(f"timed out{self._tail()}")
        waits: list[Any] = [*socks]
        if self._pidfd is not None:
            waits.append(self._pidfd)
        else:  # no pidfd (old kernel): wake up now and then to check on QEMU
            remaining = min(remaining, 0.5)
        ready, _, _ = select.select(waits, [], [], remaining)
        if not [s for s in ready if s in socks] and self.proc.poll() is not None:
            raise GuestError(f"qemu exited with {self.proc.wait()}{self._tail()}")
        return ready

    def _pump(self, deadline: float) -> None:
        """Read whatever serial output arrives next (blocking until some does)."""
        assert self.serial is not None
        if self.serial in self._select([self.serial], deadline):
            data = self.serial.recv(65536)
            if not data:
                self.proc.wait(timeout=10)
                raise GuestError(f"serial closed: qemu exited{self._tail()}")
            self.output += self._decoder.decode(data)

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = 60.0) -> str:
        """Wait until ``pattern`` (text or regex) appears after :attr:`cursor`.

        Returns the output from the cursor up to the end of the match and moves the cursor
        there, so waiting for the same text again needs a new occurrence.
        """
        deadline = time.monotonic() + timeout
        while True:
            if isinstance(pattern, re.Pattern):
                found = pattern.search(self.output, self.cursor)
                end = found.end() if found else -1
            else:
                at = self.output.find(pattern, self.cursor)
                end = at + len(pattern) if at >= 0 else -1
            if end >= 0:
                seen, self.cursor = self.output[self.cursor : end], end
                return seen
            try:
                self._pump(deadline)
            except GuestError as exc:
                raise GuestError(f"waiting for {pattern!r}: {exc}") from None

    def send(self, text: str) -> None:
        assert self.serial is not None
        self.serial.setblocking(True)
        try:
            self.serial.sendall(text.encode())
        finally:
            self.serial.setblocking(False)

    def send_line(self, line: str) -> None:
        self.send(line + "\n")

    def run(self, command: str, timeout: float = 60.0, check: bool = True) -> str:
        """Run a shell command on the serial shell and return its output (without ``\\r``).

        The typed line echoes back, so the markers are typed split by quotes (``__VL''B1__``)
        and only the command's own ``echo`` prints them whole.
        """
        n = next(self._counter)
        self.send_line(f"echo __VL''B{n}__; {command}; echo __VL''E{n}__$?")
        self.wait_for(f"__VLB{n}__", timeout)
        seen = self.wait_for(re.compile(rf"__VLE{n}__(\d+)\r?\n"), timeout)
        status = int(re.search(rf"__VLE{n}__(\d+)", seen).group(1))  # type: ignore[union-attr]
        text = seen[: seen.rindex(f"__VLE{n}__")].replace("\r", "").strip("\n")
        if check and status != 0:
            raise GuestError(f"{command!r} exited with {status}: {text}")
        return text

    # --- QMP ----------------------------------------------------------------------------

    def _qmp_read(self, accept: Any, deadline: float) -> dict[str, Any]:
        assert self.qmp_sock is not None, "start the guest with qmp=True"
        while True:
            while b"\n" in self._qmp_buf:
                line, self._qmp_buf = self._qmp_buf.split(b"\n", 1)
                if line.strip() and accept(message := json.loads(line)):
                    return message
            if self.qmp_sock in self._select([self.qmp_sock], deadline):
                data = self.qmp_sock.recv(65536)
                if not data:
                    raise GuestError(f"QMP closed: qemu exited{self._tail()}")
                self._qmp_buf += data

    def qmp(self, command: str, timeout: float = 30.0, **arguments: Any) -> Any:
        """Run a QMP command and return its ``return`` value (events are skipped)."""
        assert self.qmp_sock is not None, "start the guest with qmp=True"
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self.qmp_sock.setblocking(True)
        self.qmp_sock.sendall(json.dumps(request).encode() + b"\n")
        self.qmp_sock.setblocking(False)
        reply = self._qmp_read(lambda m: "return" in m or "error" in m, time.monotonic() + timeout)
        if "error" in reply:
            raise GuestError(f"QMP {command}: {reply['error']}")
        return reply["return"]

    # --- ending -------------------------------------------------------------------------

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait for QEMU to exit by itself (guest poweroff) and return its exit code."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise GuestError(f"qemu still running after {timeout} s{self._tail()}") from None

    def stop(self) -> None:
        """Kill QEMU (by pid) if it still runs, close everything, remove the scratch dir."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for sock in (self.serial, self.qmp_sock):
            if sock is not None:
                sock.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _tail(self) -> str:
        log = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        serial = self.output[-2000:]
        return f"\n--- serial (last 2000 chars) ---\n{serial}\n--- qemu log ---\n{log}"

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(1)
    return sock
