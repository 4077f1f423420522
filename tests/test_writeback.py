"""``Writeback`` starts the disk write of a file that a tool is still writing; ``fsync_file``
waits for the rest. Whether it saves time is for bench/import_vmdk.py; here: it follows a file
that appears late, gives up quietly on one that never does, and never outlives its block."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from virtlab.images import writeback
from virtlab.images.writeback import Writeback, fsync_file


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name == "virtlab-writeback"}


def test_follows_a_file_that_appears_while_it_runs(tmp_path: Path) -> None:
    path = tmp_path / "out.qcow2"
    calls: list[int] = []
    real = writeback._SYNC
    if real is None:
        pytest.skip("no sync_file_range on this system")
    seen = threading.Event()

    def spy(fd: int, offset: int, nbytes: int, flags: int) -> int:
        calls.append(flags)
        seen.set()
        return real(fd, offset, nbytes, flags)

    writeback._SYNC = spy
    try:
        with Writeback(path, interval=0.01):
            path.write_bytes(b"\0" * (1 << 20))
            assert seen.wait(10), "the write-back never ran on the file"
        assert _threads() == set()
    finally:
        writeback._SYNC = real
    assert set(calls) == {writeback._SYNC_FILE_RANGE_WRITE}
    fsync_file(path)


def test_a_file_that_never_appears_is_no_error(tmp_path: Path) -> None:
    with Writeback(tmp_path / "never", interval=0.01):
        pass
    assert _threads() == set()
    with pytest.raises(FileNotFoundError):
        fsync_file(tmp_path / "never")
