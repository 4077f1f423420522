"""TCP port ranges for node consoles (telnet for serial, VNC for desktop clients).

The defaults keep the two ranges apart (VNC's traditional 5900 starts the VNC range), so an
allocator can hand out ports from each without looking at the other.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from virtlab.errors import InvalidRequest

__all__ = ["DEFAULT_TELNET_PORTS", "DEFAULT_VNC_PORTS", "PortRange"]

_RANGE_RE = re.compile(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*")


@dataclass(frozen=True)
class PortRange:
    """Ports ``start`` to ``end``, both included."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 1 <= self.start <= self.end <= 65535:
            raise InvalidRequest(
                f"invalid port range {self.start}-{self.end}: "
                "expected START-END with 1 <= START <= END <= 65535"
            )

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """``"5000-5899"`` → ``PortRange(5000, 5899)``; a single ``"5000"`` is one port."""
        found = _RANGE_RE.fullmatch(text)
        if found is None and text.strip().isdigit():
            return cls(int(text), int(text))
        if found is None:
            raise InvalidRequest(f"invalid port range {text!r}: expected START-END, e.g. 5000-5899")
        return cls(int(found.group(1)), int(found.group(2)))

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.start <= port <= self.end

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.end + 1))

    def overlaps(self, other: PortRange) -> bool:
        return self.start <= other.end and other.start <= self.end

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


DEFAULT_TELNET_PORTS = PortRange(5000, 5899)
DEFAULT_VNC_PORTS = PortRange(5900, 6899)
