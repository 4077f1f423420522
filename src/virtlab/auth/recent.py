"""Bearer values verified a moment ago, so that a request does not read the catalog again.

Every API request is authenticated; the look-up (token, then user, in a worker thread) costs
a few milliseconds, more than the rest of a small request. :class:`RecentTokens` keeps what
:meth:`UserService.authenticate` found for a short while (``ttl`` seconds):

- an entry is only a hit for the very value that was verified (its sha256 is compared), until
  the token's own expiry, and for at most ``ttl`` seconds;
- every change to users or tokens (a revoke, a role, a password that ends sessions, a removed
  user) calls :meth:`forget` once it is committed: the next request reads the catalog again;
- a look-up that began before a :meth:`forget` is not kept (``put`` compares the generation
  it was given with the current one), so a revoke can never be undone by a slow reader.

One server process owns its catalog's users (every change goes through its API), so the
process's own changes are all the changes there are.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

__all__ = ["RecentTokens"]

P = TypeVar("P")


@dataclass(frozen=True)
class _Entry(Generic[P]):
    value_hash: bytes
    principal: P
    expires_at: datetime | None  # the token's own end
    kept_until: float  # time.monotonic()


class RecentTokens(Generic[P]):
    def __init__(self, ttl: float = 10.0, size: int = 1024) -> None:
        self.ttl, self.size = ttl, size
        self._entries: dict[str, _Entry[P]] = {}
        self._generation = 0
        self._lock = threading.Lock()  # look-ups run in worker threads

    @property
    def generation(self) -> int:
        """Take it before reading the catalog; give it back to :meth:`put`."""
        return self._generation

    def get(self, token_id: str, value: str) -> P | None:
        entry = self._entries.get(token_id)
        if entry is None or time.monotonic() >= entry.kept_until:
            return None
        if entry.expires_at is not None and entry.expires_at <= datetime.now(UTC):
            return None
        if not hmac.compare_digest(entry.value_hash, _hash(value)):
            return None
        return entry.principal

    def put(
        self, token_id: str, value: str, principal: P, expires_at: datetime | None, generation: int
    ) -> None:
        with self._lock:
            if generation != self._generation:
                return  # users or tokens changed while it was read: not kept
            if len(self._entries) >= self.size:
                self._entries.clear()
            self._entries[token_id] = _Entry(
                _hash(value), principal, expires_at, time.monotonic() + self.ttl
            )

    def forget(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()


def _hash(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()
