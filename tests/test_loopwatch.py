"""The event loop's watchdog tells a loop held by a blocking call from one held by work."""

from __future__ import annotations

import asyncio
import sys
import time
from types import FrameType

from virtlab._util.loopwatch import LoopWatch, _in_selector


def _hold_asleep(seconds: float) -> None:
    time.sleep(seconds)  # the blocking call under test: a sleep in a system call


def _hold_busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def _watched(hold, seconds: float) -> LoopWatch:  # type: ignore[no-untyped-def]
    watch = LoopWatch(interval=0.02, threshold=0.1)
    watch.start()
    try:
        await asyncio.wait_for(watch.wait_samples(3), 30)  # it runs: a few answers on time
        if hold is not None:
            hold(seconds)
        # the late answer is in, and one more
        await asyncio.wait_for(watch.wait_samples(watch.stats().samples + 2), 30)
    finally:
        watch.stop()
    return watch


def test_a_loop_asleep_in_a_system_call_is_blocked_and_the_culprit_named() -> None:
    stats = asyncio.run(_watched(_hold_asleep, 0.4)).stats()
    assert stats.blocked == 1 and stats.busy == stats.waiting == 0, stats
    (stall,) = stats.stalls
    assert stall.how == "blocked"
    assert stall.ms >= 300
    assert "_hold_asleep" in stall.where and "test_loopwatch.py" in stall.where
    assert stats.max_lag_ms >= 300
    assert stall.syscall in ("clock_nanosleep", "nanosleep", "select")
    assert f"asleep in the system call {stall.syscall}" in stall.describe()


def test_a_loop_running_python_is_busy_not_blocked() -> None:
    stats = asyncio.run(_watched(_hold_busy, 0.4)).stats()
    assert stats.busy == 1 and stats.blocked == stats.waiting == 0, stats
    assert "_hold_busy" in stats.stalls[0].where


def test_an_idle_loop_has_no_stall() -> None:
    stats = asyncio.run(_watched(None, 0)).stats()
    assert stats.stalls == () and stats.blocked == stats.waiting == stats.busy == 0
    assert stats.samples >= 5
    assert stats.max_lag_ms < 100


def _frames_of_a_loop_turn() -> dict[str, FrameType]:
    """The frames of a real asyncio loop's ``_run_once`` and of its selector's ``select``,
    caught by a profile hook while the loop runs one callback."""
    frames: dict[str, FrameType] = {}

    def hook(frame: FrameType, event: str, _arg: object) -> None:
        if event == "call" and frame.f_code.co_name in ("_run_once", "select"):
            frames.setdefault(frame.f_code.co_name, frame)

    async def turn() -> None:
        await asyncio.sleep(0)

    sys.setprofile(hook)
    try:
        asyncio.run(turn())
    finally:
        sys.setprofile(None)
    return frames


def test_the_selector_wait_is_in_the_selector_and_the_loop_between_callbacks_is_not() -> None:
    frames = _frames_of_a_loop_turn()
    assert frames["select"].f_code.co_filename.endswith("selectors.py"), frames
    assert _in_selector(frames["select"])
    assert not _in_selector(frames["_run_once"])  # between callbacks: not asleep in select
    assert not _in_selector(None)


def test_the_system_call_is_named_when_asleep_in_one_and_empty_when_running() -> None:
    """The watchdog reads the loop thread's state, then its system call: a thread that woke in
    between reads "running" there, which must not count as a blocking call."""
    import threading

    from virtlab._util.loopwatch import _syscall

    ready, stop = threading.Event(), threading.Event()
    tids: dict[str, int] = {}

    def spin() -> None:
        tids["spin"] = threading.get_native_id()
        ready.set()
        while not stop.is_set():
            pass

    def wait() -> None:
        tids["wait"] = threading.get_native_id()
        stop.wait(30)

    threads = [threading.Thread(target=spin), threading.Thread(target=wait)]
    for thread in threads:
        thread.start()
    try:
        assert ready.wait(10)
        # The spinning thread runs Python (or waits for the interpreter lock in futex); the
        # waiting one sleeps in futex.
        assert _syscall(tids["wait"]) == "futex"
        assert _syscall(tids["spin"]) in ("", "futex")
        assert _syscall(2**22 + 7) == "?"  # no such thread
    finally:
        stop.set()
        for thread in threads:
            thread.join()
