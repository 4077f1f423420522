"""virtlab.auth.recent: what a cache of verified bearer values must never do."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from virtlab.auth.recent import RecentTokens

VALUE = "vl_0123456789abcdef_secret"


def test_a_hit_is_only_for_the_same_value_within_its_time_and_the_tokens_own() -> None:
    recent: RecentTokens[str] = RecentTokens(ttl=0.2)
    put = time.monotonic()
    recent.put("0123456789abcdef", VALUE, "alice", None, recent.generation)
    assert recent.get("0123456789abcdef", VALUE) == "alice"
    assert recent.get("0123456789abcdef", VALUE + "x") is None  # same id, another secret
    assert recent.get("fedcba9876543210", VALUE) is None
    while time.monotonic() < put + 0.2:  # kept for its ttl …
        assert recent.get("0123456789abcdef", VALUE) == "alice"
    while recent.get("0123456789abcdef", VALUE) is not None:  # … and not much longer
        assert time.monotonic() < put + 1.0, "still kept a second after a 0.2 s ttl"
    ended = datetime.now(UTC) - timedelta(seconds=1)
    recent.put("0123456789abcdef", VALUE, "alice", ended, recent.generation)
    assert recent.get("0123456789abcdef", VALUE) is None  # the token itself has expired


def test_forget_drops_everything_and_a_read_begun_before_it_is_not_kept() -> None:
    recent: RecentTokens[str] = RecentTokens()
    recent.put("0123456789abcdef", VALUE, "alice", None, recent.generation)
    before = recent.generation  # a look-up that read the catalog before a revoke …
    recent.forget()  # … committed meanwhile
    assert recent.get("0123456789abcdef", VALUE) is None
    recent.put("0123456789abcdef", VALUE, "alice", None, before)
    assert recent.get("0123456789abcdef", VALUE) is None  # the stale read is not kept
    recent.put("0123456789abcdef", VALUE, "alice", None, recent.generation)
    assert recent.get("0123456789abcdef", VALUE) == "alice"


def test_it_stays_bounded() -> None:
    recent: RecentTokens[int] = RecentTokens(size=3)
    for i in range(10):
        recent.put(f"{i:016x}", f"v{i}", i, None, recent.generation)
    assert len(recent._entries) <= 3
    assert recent.get(f"{9:016x}", "v9") == 9
