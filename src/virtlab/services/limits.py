"""Limits of a shared server: imports in flight, and nodes per user.

(RAM promised to nodes against the host's memory is :mod:`virtlab.nodes.memory`, applied by
the node service.) Each limit is checked and taken in one step under a lock, so concurrent
requests cannot pass it together; a refusal names the limit, where the requester stands, and
what to do.

- :class:`ImportSlots`: every import in flight (an upload being received and checked, a lab
  archive, a rescan or repair of the base images) takes a slot for its whole run, before any
  byte is staged. The server has ``limit`` slots; a user (role ``user``) may hold at most
  ``per_user`` of them, so one user cannot starve a class. Admins count against the server's
  limit only. Past either: :class:`TooManyImports` (429, Retry-After).
- :class:`NodeQuota`: the nodes in the labs of a user (role ``user``) number at most ``limit``
  (0: no limit); admins' labs, and labs without an owner, are exempt. A lab deploy reserves all
  its nodes up front. Past it: :class:`LimitReached` (409).
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from virtlab.catalog import Catalog, NodeRepository
from virtlab.catalog.labs import LabRepository
from virtlab.catalog.users import UserRecord, UserRepository
from virtlab.errors import LimitReached, TooManyImports
from virtlab.services.users import Principal

__all__ = ["SYSTEM", "ImportSlots", "NodeQuota", "Requester"]

RETRY_AFTER = 10  # seconds: an import rarely ends sooner


@dataclass(frozen=True)
class Requester:
    """Who runs an import: a user's share is counted by ``user_id``; admins have no share."""

    user_id: str | None
    name: str
    is_admin: bool

    @classmethod
    def of(cls, who: Principal) -> Requester:
        return cls(who.user_id, who.name, who.is_admin)


SYSTEM = Requester(None, "the server", True)  # imports nobody asked for (start-up)


class ImportSlots:
    def __init__(self, limit: int, per_user: int) -> None:
        self.limit = limit
        self.per_user = per_user
        self._lock = threading.Lock()
        self._running = 0
        self._by_user: Counter[str] = Counter()

    @property
    def running(self) -> int:
        return self._running

    def running_for(self, user_id: str | None) -> int:
        return self._by_user[user_id] if user_id else 0

    @contextlib.contextmanager
    def take(self, who: Requester = SYSTEM) -> Iterator[None]:
        """Hold one slot for the block, or refuse at once."""
        shared = who.user_id is not None and not who.is_admin
        with self._lock:
            if self._running >= self.limit:
                raise TooManyImports(
                    f"the server is running {self._running} imports, its limit "
                    f"(VIRTLAB_MAX_CONCURRENT_IMPORTS={self.limit}); nothing was received. Try "
                    f"again in a moment (GET /api/imports shows those in flight), or ask an "
                    f"admin to raise VIRTLAB_MAX_CONCURRENT_IMPORTS",
                    RETRY_AFTER,
                )
            if shared and self._by_user[who.user_id] >= self.per_user:  # type: ignore[index]
                raise TooManyImports(
                    f"{who.name} is running {self._by_user[who.user_id]} imports, a user's "  # type: ignore[index]
                    f"share of the server's {self.limit} (VIRTLAB_MAX_CONCURRENT_IMPORTS_PER_USER"
                    f"={self.per_user}); nothing was received. Wait for one of yours to finish "
                    "and try again",
                    RETRY_AFTER,
                )
            self._running += 1
            if shared:
                self._by_user[who.user_id] += 1  # type: ignore[index]
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                if shared:
                    self._by_user[who.user_id] -= 1  # type: ignore[index]
                    if self._by_user[who.user_id] <= 0:  # type: ignore[index]
                        del self._by_user[who.user_id]  # type: ignore[arg-type]


class NodeQuota:
    """Nodes per user, counted from the catalog plus the creations in flight."""

    def __init__(self, catalog: Catalog, limit: int) -> None:
        self.catalog = catalog
        self.limit = limit
        self._lock = threading.Lock()
        self._pending: Counter[str] = Counter()  # user id -> nodes being made

    def limited_user(self, owner_id: str | None) -> UserRecord | None:
        """The owner whose nodes are limited: a user of role ``user``; None if exempt."""
        if owner_id is None or self.limit <= 0:
            return None
        with self.catalog.session() as session:
            user = UserRepository(session).get(owner_id)
        return user if user is not None and not user.is_admin else None

    def owner_of_lab(self, lab_id: str) -> str | None:
        with self.catalog.session() as session:
            lab = LabRepository(session).get(lab_id)
        return lab.owner_id if lab else None

    def count(self, owner_id: str) -> int:
        """The nodes the owner's labs hold, and those being made for them."""
        with self.catalog.session() as session:
            made = NodeRepository(session).count_by_owner().get(owner_id, 0)
        return made + self._pending[owner_id]

    def check(self, owner_id: str | None, count: int, what: str) -> None:
        """Refuse now what ``reserve`` would refuse, reserving nothing."""
        with self.reserve(owner_id, count, what):
            pass

    @contextlib.contextmanager
    def reserve(self, owner_id: str | None, count: int, what: str) -> Iterator[Callable[[], None]]:
        """Reserve ``count`` nodes for ``owner_id`` for the block, or refuse. The block calls
        the yielded function once per node whose row is committed (it counts from then on)."""
        user = self.limited_user(owner_id)
        if user is None or count <= 0:
            yield lambda: None
            return
        with self._lock:
            have = self.count(user.id)
            if have + count > self.limit:
                free = max(0, self.limit - have)
                raise LimitReached(
                    f"cannot make {what}: user {user.name} has {have} nodes of the "
                    f"{self.limit} a user may have (VIRTLAB_MAX_NODES_PER_USER), so "
                    f"{free} more fit and this needs {count}. Delete nodes or labs you no "
                    "longer need (`virtlab lab destroy NAME`), or ask an admin to raise "
                    "VIRTLAB_MAX_NODES_PER_USER"
                )
            self._pending[user.id] += count
        left = [count]

        def made() -> None:
            with self._lock:
                if left[0] > 0:
                    left[0] -= 1
                    self._pending[user.id] -= 1

        try:
            yield made
        finally:
            with self._lock:
                self._pending[user.id] -= left[0]
                if self._pending[user.id] <= 0:
                    del self._pending[user.id]
