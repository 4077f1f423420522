"""RAM promised to nodes against one host's memory.

A host can promise ``(memory - reserve) x overcommit`` MiB to guests: ``memory`` is its
MemTotal (or a setting), ``reserve`` is kept for the host and the server. A node's RAM is
promised while it is starting, running, suspended or stopping (the caller says which, from the
catalog: ``active``), and while a start of it is in flight (``hold``: from the check until the
start has ended either way). The check and the hold are one step under a lock, so concurrent
starts can never promise more than the host has.

One ledger per host: nothing here knows where a node runs, so a placement across hosts can keep
one ``RamLedger`` per host.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from virtlab.errors import LimitReached
from virtlab.settings import Settings

__all__ = ["MemoryBudget", "RamLedger", "host_memory_mb", "memory_budget"]

ADVICE = (
    "stop nodes you do not need, lower their ram_mb, or raise what the host may promise "
    "(VIRTLAB_MEMORY_OVERCOMMIT, VIRTLAB_MEMORY_RESERVE_MB)"
)


def host_memory_mb(meminfo: Path = Path("/proc/meminfo")) -> int:
    """The host's MemTotal in MiB."""
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise ValueError(f"{meminfo} has no MemTotal line")


@dataclass(frozen=True)
class MemoryBudget:
    host_mb: int  # the host's memory
    reserve_mb: int  # kept for the host and the server
    overcommit: float  # 1.0: promise no more than there is

    @classmethod
    def measure(cls, host_mb: int | None, reserve_mb: int, overcommit: float) -> MemoryBudget:
        """The budget of this host: ``host_mb`` if given, else its MemTotal."""
        return cls(host_mb or host_memory_mb(), reserve_mb, overcommit)

    @property
    def capacity_mb(self) -> int:
        """What nodes may be promised in all."""
        return max(0, int((self.host_mb - self.reserve_mb) * self.overcommit))

    def describe(self) -> str:
        over = f" x overcommit {self.overcommit:g}" if self.overcommit != 1 else ""
        return (
            f"{self.capacity_mb} MiB (host memory {self.host_mb} MiB, less {self.reserve_mb} "
            f"MiB kept for the host and the server{over})"
        )


def memory_budget(settings: Settings) -> MemoryBudget:
    """What this host may promise to nodes: its memory (MemTotal, or the setting), less the
    reserve, times the overcommit ratio."""
    return MemoryBudget.measure(
        settings.host_memory_mb, settings.memory_reserve_mb, settings.memory_overcommit
    )


class RamLedger:
    """The starts in flight on one host, and the check that admits a new one."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}  # id -> MiB, for the starts in flight
        self._holders: Counter[str] = Counter()  # id -> how many holds (a lab's, then a node's)

    def promised_mb(self, active: Mapping[str, int]) -> int:
        """RAM promised now: ``active`` (id -> MiB: the nodes that run, from the catalog) and
        the starts in flight, each machine once."""
        with self._lock:
            return sum({**self._pending, **active}.values())

    def check(self, wanted: Mapping[str, int], active: Mapping[str, int], what: str) -> None:
        """Refuse (LimitReached) if ``wanted`` (id -> MiB) does not fit beside what is promised."""
        with self._lock:
            self._check(wanted, active, what)

    def _check(self, wanted: Mapping[str, int], active: Mapping[str, int], what: str) -> None:
        promised = {**self._pending, **active}
        extra = sum(mb for key, mb in wanted.items() if key not in promised)
        used = sum(promised.values())
        capacity = self.budget.capacity_mb
        if extra and used + extra > capacity:
            raise LimitReached(
                f"cannot start {what}: it needs {extra} MiB of RAM, and nodes are already "
                f"promised {used} MiB of the {self.budget.describe()}; {max(0, capacity - used)}"
                f" MiB are free. {ADVICE[0].upper()}{ADVICE[1:]}"
            )

    @contextlib.contextmanager
    def hold(
        self, wanted: Mapping[str, int], active: Mapping[str, int], what: str
    ) -> Iterator[None]:
        """Check ``wanted`` and keep it promised until the block ends (a start in flight).
        Holding a machine that is held already (a node's start inside its lab's) adds nothing."""
        with self._lock:
            self._check(wanted, active, what)
            for key, mb in wanted.items():
                self._pending[key] = mb
                self._holders[key] += 1
        try:
            yield
        finally:
            with self._lock:
                for key in wanted:
                    self._holders[key] -= 1
                    if self._holders[key] <= 0:
                        del self._holders[key]
                        self._pending.pop(key, None)
