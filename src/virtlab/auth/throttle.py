"""Failed logins slow a guesser down: after ``limit`` failures for one user name from one
address within ``window`` seconds, that pair is refused for ``lockout`` seconds (doubling with
each lockout in a row, up to ``max_lockout``), even with the right password. A success clears
the pair. Kept in memory: a restart forgets it, which costs a guesser a restart of the server.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

__all__ = ["LoginThrottle"]


@dataclass
class _Record:
    failures: list[float] = field(default_factory=list)
    locked_until: float = 0.0
    lockouts: int = 0


class LoginThrottle:
    def __init__(
        self,
        *,
        limit: int = 5,
        window: float = 900.0,
        lockout: float = 60.0,
        max_lockout: float = 3600.0,
        clock=time.monotonic,  # type: ignore[no-untyped-def]
    ) -> None:
        self.limit, self.window = limit, window
        self.lockout, self.max_lockout = lockout, max_lockout
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], _Record] = {}

    def wait_for(self, name: str, address: str) -> int:
        """Seconds until ``name`` may try again from ``address`` (0: now)."""
        with self._lock:
            record = self._records.get((name, address))
            if record is None:
                return 0
            return max(0, math.ceil(record.locked_until - self._clock()))

    def failed(self, name: str, address: str) -> None:
        now = self._clock()
        with self._lock:
            record = self._records.setdefault((name, address), _Record())
            record.failures = [t for t in record.failures if now - t < self.window] + [now]
            if len(record.failures) >= self.limit:
                record.locked_until = now + min(
                    self.lockout * 2**record.lockouts, self.max_lockout
                )  # fmt: skip
                record.lockouts += 1
                record.failures.clear()
            self._prune(now)

    def succeeded(self, name: str, address: str) -> None:
        with self._lock:
            self._records.pop((name, address), None)

    def _prune(self, now: float) -> None:
        if len(self._records) < 10_000:
            return
        for key, record in list(self._records.items()):
            if record.locked_until < now and all(now - t >= self.window for t in record.failures):
                del self._records[key]
