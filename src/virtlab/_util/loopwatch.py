"""A watchdog for the event loop: how late it answers, and who held it when it was late.

A thread asks the loop, every ``interval``, to run a no-op (``call_soon_threadsafe``) and
measures how long the loop takes to get to it: the loop's *lag*. An idle or busy-but-healthy
loop answers within a millisecond or two. When the answer is later than ``threshold`` the
thread looks at the loop's thread while it waits: its Python stack (``sys._current_frames``)
says which function holds the loop, and its scheduler state (``/proc/self/task/TID/stat``)
says how:

- ``blocked``: the thread sleeps in a system call outside the selector (a file read, an
  fsync, ``time.sleep``; ``/proc/self/task/TID/syscall`` names it): work that belongs in a
  thread or a subprocess;
- ``waiting``: the thread sleeps on a futex, for the interpreter lock, which the server's
  worker threads hold while they run Python (or for a lock one of them holds), or in the
  selector itself;
- ``busy``: the thread runs, or waits for a CPU (a long computation, or a host so loaded that
  the server does not get a core: not the code's fault, but worth seeing).

Each late answer is a :class:`Stall`, logged as a warning with its place, and counted; the
figures are served to admins (``GET /api/server/loop``) and read by the load test and the
load benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

__all__ = ["LoopStats", "LoopWatch", "Stall"]

log = logging.getLogger("virtlab.loop")

# Where an idle asyncio loop sleeps: the ``select`` method of the stdlib's selectors (which
# calls epoll/poll/select in C). Not ``_run_once``: that is the loop between callbacks.
_SELECTOR = ("select", "selectors.py")
_OWN_CODE = "/virtlab/"


@dataclass(frozen=True)
class Stall:
    """The loop answered ``ms`` late; while it was held its thread was ``how``, in ``where``."""

    at: float  # time.time() when the stall ended
    ms: float
    how: str  # "blocked", "waiting" or "busy": see the module's doc
    where: str  # "path:line function": virtlab's innermost frame, then the innermost one
    syscall: str = ""  # the system call it slept in, when it slept

    def describe(self) -> str:
        what = {
            "blocked": f"asleep in the system call {self.syscall}",
            "waiting": f"waiting in {self.syscall or 'the selector'}: for the interpreter lock, "
            "a lock, or a wake-up",
        }.get(self.how, "running or waiting for a CPU")
        return f"the event loop was held {self.ms:.0f} ms ({what}) at {self.where}"


@dataclass(frozen=True)
class LoopStats:
    interval_ms: float
    threshold_ms: float
    samples: int  # lag measurements so far
    max_lag_ms: float
    p99_lag_ms: float  # of the last ``window`` measurements
    stalls: tuple[Stall, ...]  # the most recent ones, oldest first
    blocked: int  # stalls with the thread asleep in a system call, ever
    waiting: int  # stalls with the thread waiting on a futex (the interpreter lock), ever
    busy: int  # stalls with the thread running or waiting for a CPU, ever


class LoopWatch:
    """Start with :meth:`start` from inside the loop; :meth:`stop` ends the thread."""

    def __init__(
        self, *, interval: float = 0.05, threshold: float = 0.1, window: int = 2000
    ) -> None:
        self.interval = interval
        self.threshold = threshold
        self._lags: deque[float] = deque(maxlen=window)
        self._stalls: deque[Stall] = deque(maxlen=50)
        self._count = {"blocked": 0, "waiting": 0, "busy": 0}
        self._samples = 0
        self._max = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0  # threading.get_ident() of the loop's thread
        self._loop_tid = 0  # its kernel thread id, for /proc
        self._sampled: asyncio.Event | None = None  # set on the loop after each measurement
        self._waiters = 0  # coroutines in wait_samples: only then is the loop told

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._loop_tid = threading.get_native_id()
        self._sampled = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="virtlab-loopwatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    async def wait_samples(self, count: int) -> int:
        """Return once ``count`` lag measurements are in (the number in then). Each
        measurement sets an event on the loop, while someone waits here."""
        assert self._sampled is not None, "start the watch first"
        self._waiters += 1  # before reading the count: a measurement after it tells us
        try:
            while self._samples < count:
                self._sampled.clear()
                await self._sampled.wait()
        finally:
            self._waiters -= 1
        return self._samples

    def stats(self) -> LoopStats:
        lags = sorted(self._lags)
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else 0.0
        return LoopStats(
            interval_ms=self.interval * 1000,
            threshold_ms=self.threshold * 1000,
            samples=self._samples,
            max_lag_ms=round(self._max * 1000, 1),
            p99_lag_ms=round(p99 * 1000, 1),
            stalls=tuple(self._stalls),
            blocked=self._count["blocked"],
            waiting=self._count["waiting"],
            busy=self._count["busy"],
        )

    # -- the watching thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._watch()
        except Exception:  # a watchdog must never take anything down with it
            log.exception("the event loop's watchdog failed and stopped")

    def _watch(self) -> None:
        assert self._loop is not None
        while not self._stop.wait(self.interval):
            answered = threading.Event()
            sent = time.perf_counter()
            try:
                self._loop.call_soon_threadsafe(answered.set)
            except RuntimeError:  # the loop is closed: the server is going away
                return
            seen: tuple[str, str, str] | None = None
            if not answered.wait(self.threshold):
                seen = self._look()  # while it is still held
                while not answered.wait(0.5):
                    if self._stop.is_set() or self._loop.is_closed():
                        return
            self._record(time.perf_counter() - sent, seen)

    def _record(self, lag: float, seen: tuple[str, str, str] | None) -> None:
        self._samples += 1
        self._lags.append(lag)
        self._max = max(self._max, lag)
        if self._waiters and self._loop is not None and self._sampled is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._sampled.set)
        if seen is None:
            return
        how, where, syscall = seen
        stall = Stall(time.time(), round(lag * 1000, 1), how, where, syscall)
        self._stalls.append(stall)
        self._count[how] += 1
        log.warning("%s", stall.describe())

    def _look(self) -> tuple[str, str, str]:
        frame = sys._current_frames().get(self._loop_thread)
        where = _where(frame)
        if _thread_state(self._loop_tid) not in ("S", "D"):
            return "busy", where, ""
        syscall = _syscall(self._loop_tid)
        if not syscall:
            # Asleep, but not in a system call: it woke and ran between the two reads (a loaded
            # host is slow to give it a CPU), or it waits for a page of memory to come in.
            return "busy", where, ""
        if syscall in _WAITS or _in_selector(frame):
            return "waiting", where, syscall
        return "blocked", where, syscall


def _in_selector(frame: FrameType | None) -> bool:
    """Whether the loop's innermost Python frame is the selector's wait."""
    if frame is None:
        return False
    name, module = _SELECTOR
    return frame.f_code.co_name == name and frame.f_code.co_filename.endswith(module)


def _where(frame: FrameType | None) -> str:
    """The innermost frame of virtlab's own code, and the innermost frame if another."""
    if frame is None:
        return "?"
    own = frame
    while own is not None and _OWN_CODE not in own.f_code.co_filename:
        own = own.f_back
    if own is None or own is frame:
        return _describe(frame)
    return f"{_describe(own)}, in {_describe(frame)}"


def _describe(frame: FrameType) -> str:
    path = frame.f_code.co_filename
    if _OWN_CODE in path:
        path = "virtlab/" + path.rsplit(_OWN_CODE, 1)[1]
    elif "/site-packages/" in path:
        path = path.rsplit("/site-packages/", 1)[1]
    return f"{path}:{frame.f_lineno} {frame.f_code.co_name}"


# x86_64 numbers of the system calls a Python server sleeps in; others are shown as numbers.
_SYSCALLS = {
    0: "read", 1: "write", 7: "poll", 17: "pread64", 18: "pwrite64", 19: "readv",
    20: "writev", 23: "select", 35: "nanosleep", 42: "connect", 43: "accept", 44: "sendto",
    45: "recvfrom", 61: "wait4", 74: "fsync", 75: "fdatasync", 202: "futex",
    230: "clock_nanosleep", 232: "epoll_wait", 247: "waitid", 257: "openat", 271: "ppoll",
    277: "sync_file_range", 281: "epoll_pwait",
}  # fmt: skip


# Sleeping in these is not a blocking call of ours: the interpreter lock (or a lock) is a
# futex, and the selector's own wait (uvloop's is in C, with no Python frame to show it).
_WAITS = frozenset({"futex", "epoll_wait", "epoll_pwait", "poll", "ppoll", "select"})


def _syscall(tid: int) -> str:
    """The system call ``tid`` sleeps in; "" when it is in none (the file says ``running``, or
    ``-1`` for a thread stopped outside one); "?" when it cannot be read."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        number = Path(f"/proc/self/task/{tid}/syscall").read_text().split()[0]
        if number.isdigit():
            return _SYSCALLS.get(int(number), f"#{number}")
        if number in ("running", "-1"):
            return ""
    return "?"


def _thread_state(tid: int) -> str:
    """R (running or runnable), S (sleeping), D (uninterruptible: disk), …; "?" if unknown."""
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0]
    return "?"
