"""Samplers: an import's stages as the server reports them, a process's resident memory."""

from __future__ import annotations

import http.client
import json
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import psutil

from bench.clients import _target
from bench.server import AUTH

__all__ = ["RssSampler", "StagePoller"]


@dataclass
class StagePoller:
    """Polls ``GET /api/imports/{id}`` and notes when each stage was first seen.

    Times are ``time.perf_counter()`` values. ``after`` (an event) holds the polling back until
    it is set: the upload benchmark polls only once the client has sent its last byte, so the
    polling costs the server nothing while it receives.
    """

    base_url: str
    import_id: str
    interval: float = 0.02
    after: threading.Event | None = None
    first_seen: dict[str, float] = field(default_factory=dict)
    finished_at: float | None = None
    last: dict[str, Any] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> StagePoller:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.after is not None:
            self.after.set()
        if self._thread is not None:
            self._thread.join(30)

    def wait_left_upload(self, timeout: float = 600) -> float | None:
        """Block until the import is past its upload stage; when that was first seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            moment = self.left_upload
            if moment is not None:
                return moment
            time.sleep(self.interval / 2)
        return self.left_upload

    @property
    def left_upload(self) -> float | None:
        later = [t for stage, t in self.first_seen.items() if stage != "upload"]
        if self.finished_at is not None:
            later.append(self.finished_at)
        return min(later) if later else None

    def _run(self) -> None:
        if self.after is not None:
            self.after.wait()
        host, port, _ = _target(self.base_url)
        conn = http.client.HTTPConnection(host, port, timeout=30)
        path = f"/api/imports/{self.import_id}"
        try:
            while not self._stop.is_set():
                try:
                    conn.request("GET", path, headers=AUTH)
                    response = conn.getresponse()
                    body = response.read()
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=30)
                    continue
                now = time.perf_counter()
                if response.status == 200:
                    doc = json.loads(body)
                    self.last = doc
                    self.first_seen.setdefault(doc["stage"], now)
                    if doc["state"] != "running" and self.finished_at is None:
                        self.finished_at = now
                        return
                self._stop.wait(self.interval)
        finally:
            conn.close()


@dataclass
class RssSampler:
    """Samples the resident memory of a process and of its children every ``interval`` s."""

    pid: int
    interval: float = 0.05
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, own, with kids)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RssSampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self.sample()

    def sample(self) -> None:
        try:
            proc = psutil.Process(self.pid)
            own = proc.memory_info().rss
            kids = 0
            for child in proc.children(recursive=True):
                with suppress(psutil.Error):
                    kids += child.memory_info().rss
        except psutil.Error:
            return
        self.samples.append((time.perf_counter(), own, own + kids))

    def peak(self, start: float = float("-inf"), end: float = float("inf")) -> tuple[int, int]:
        """The highest (own, with children) RSS sampled between ``start`` and ``end``."""
        inside = [s for s in self.samples if start <= s[0] <= end] or self.samples
        return max(s[1] for s in inside), max(s[2] for s in inside)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()
