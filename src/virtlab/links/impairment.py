"""What a relay does to the frames of one direction: delay, jitter, loss, corruption, rate.

:class:`Impairment` is a frozen, validated value (``Impairment()`` is a plain cable).
:class:`Lane` applies one to the frames of one direction, with no I/O and no clock of its own
(the relay passes ``now``), so every decision can be tested alone. Its randomness comes from
its own :class:`random.Random` (seeded in tests: a "30 % loss" run is the same run every time):

- :func:`release_delay`: netem's model, a constant delay plus uniform jitter in
  ``[-jitter, +jitter]``, never below zero. The relay keeps frames in order (a frame is never
  released before the one received ahead of it), unlike netem, which reorders under jitter:
  guests see variable latency without spurious reordering of their TCP streams.
- :func:`corrupt`: flips one random bit after the 14-byte Ethernet header, so the frame still
  reaches the right interface and the guest's checksums have something to catch.
- :class:`TokenBucket`: the rate limit, counted on Ethernet frame bytes (no preamble, no
  inter-frame gap), with a burst of :data:`BURST_SECONDS` of traffic; a frame may overdraw the
  bucket, and the next waits until the debt is paid.
- the queue: frames wait in a FIFO of at most ``queue_limit`` frames (netem's default limit,
  1000), tail-dropped when full, only while the direction shapes time (delay, jitter, rate) or
  still holds frames from when it did. Frames already queued keep their release times when the
  impairment changes.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, fields

from virtlab.errors import InvalidRequest

__all__ = [
    "BURST_SECONDS",
    "ETHERNET_HEADER",
    "QUEUE_LIMIT",
    "DirectionCounters",
    "Impairment",
    "Lane",
    "TokenBucket",
    "corrupt",
    "release_delay",
]

ETHERNET_HEADER = 14  # destination MAC, source MAC, ethertype
BURST_SECONDS = 0.005  # the token bucket holds this much traffic at the configured rate
MAX_DELAY_MS = 60_000.0
MAX_RATE_KBPS = 100_000_000  # 100 Gbit/s: "unlimited" is 0
QUEUE_LIMIT = 1000  # frames per direction, netem's default limit


@dataclass(frozen=True)
class Impairment:
    """One direction's impairment; every field at its default means none of that kind.

    ``delay_ms``/``jitter_ms``: 0 to 60000; ``loss_pct``/``corrupt_pct``: 0 to 100 (percent of
    frames); ``rate_kbps``: kilobits (1000 bits) per second of Ethernet frames, 0 = unlimited.
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    corrupt_pct: float = 0.0
    rate_kbps: int = 0

    def __post_init__(self) -> None:
        limits = {
            "delay_ms": (0.0, MAX_DELAY_MS),
            "jitter_ms": (0.0, MAX_DELAY_MS),
            "loss_pct": (0.0, 100.0),
            "corrupt_pct": (0.0, 100.0),
            "rate_kbps": (0, MAX_RATE_KBPS),
        }
        for f in fields(self):
            value = getattr(self, f.name)
            low, high = limits[f.name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidRequest(f"impairment {f.name} must be a number, not {value!r}")
            if f.name == "rate_kbps" and not isinstance(value, int):
                if not float(value).is_integer():
                    raise InvalidRequest(f"impairment rate_kbps must be whole, not {value!r}")
                object.__setattr__(self, "rate_kbps", int(value))
            if not math.isfinite(value) or not low <= value <= high:
                raise InvalidRequest(
                    f"impairment {f.name} must be {low:g} to {high:g}, not {value!r}"
                )

    @property
    def shapes_time(self) -> bool:
        """Whether frames wait in the relay's queue (delay, jitter or a rate limit)."""
        return bool(self.delay_ms or self.jitter_ms or self.rate_kbps)

    @property
    def is_none(self) -> bool:
        return self == Impairment()


def release_delay(imp: Impairment, rng: random.Random) -> float:
    """Seconds a frame waits before it may be sent: delay plus uniform jitter, at least 0."""
    delay = imp.delay_ms
    if imp.jitter_ms:
        delay += rng.uniform(-imp.jitter_ms, imp.jitter_ms)
    return max(delay, 0.0) / 1000.0


def corrupt(frame: bytes, rng: random.Random) -> bytes | None:
    """``frame`` with one random bit flipped after the Ethernet header (``None``: no payload)."""
    payload_bits = (len(frame) - ETHERNET_HEADER) * 8
    if payload_bits <= 0:
        return None
    bit = rng.randrange(payload_bits)
    at = ETHERNET_HEADER + bit // 8
    changed = bytearray(frame)
    changed[at] ^= 1 << (bit % 8)
    return bytes(changed)


class TokenBucket:
    """A rate limit in bytes per second; :meth:`wait` says how long the next frame must wait."""

    def __init__(self, rate_kbps: int, now: float) -> None:
        self.rate = 0.0
        self.burst = 0.0
        self.tokens = 0.0
        self.stamp = now
        self.set_rate(rate_kbps, now)

    def set_rate(self, rate_kbps: int, now: float) -> None:
        """Change the rate (0: unlimited); tokens earned so far are kept, up to the new burst."""
        self._refill(now)
        self.rate = rate_kbps * 1000 / 8
        self.burst = self.rate * BURST_SECONDS
        self.tokens = min(self.tokens, self.burst) if rate_kbps else 0.0

    def _refill(self, now: float) -> None:
        if self.rate:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait(self, now: float) -> float:
        """Seconds until a frame may go (0: now). Unlimited buckets never wait."""
        if not self.rate:
            return 0.0
        self._refill(now)
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def take(self, size: int, now: float) -> None:
        """Charge a frame of ``size`` bytes sent at ``now`` (may leave the bucket in debt)."""
        if self.rate:
            self._refill(now)
            self.tokens -= size


@dataclass
class DirectionCounters:
    """What happened to the frames of one direction since the relay started."""

    frames: int = 0  # received from the sender
    bytes: int = 0
    forwarded: int = 0  # handed to the receiver's socket
    dropped_by_loss: int = 0
    dropped_queue: int = 0  # the queue was full
    dropped_send: int = 0  # the receiver was not there
    corrupted: int = 0


class Lane:
    """One direction's impairment pipeline: loss, corruption, then the timed queue."""

    def __init__(self, rng: random.Random, queue_limit: int = QUEUE_LIMIT) -> None:
        if isinstance(queue_limit, bool) or not isinstance(queue_limit, int) or queue_limit < 1:
            raise InvalidRequest(f"a relay queue holds at least one frame, not {queue_limit!r}")
        self.rng = rng
        self.queue_limit = queue_limit
        self.impairment = Impairment()
        self.bucket = TokenBucket(0, 0.0)
        self.queue: deque[tuple[float, bytes]] = deque()
        self.last_release = 0.0
        self.counters = DirectionCounters()

    def set(self, impairment: Impairment, now: float) -> None:
        if not isinstance(impairment, Impairment):
            raise InvalidRequest(f"an impairment is an Impairment, not {impairment!r}")
        self.impairment = impairment
        self.bucket.set_rate(impairment.rate_kbps, now)

    def admit(self, frame: bytes, now: float) -> bytes | None:
        """Count, lose, corrupt and maybe queue ``frame``; return it if it goes out at once."""
        counters, imp, rng = self.counters, self.impairment, self.rng
        counters.frames += 1
        counters.bytes += len(frame)
        if imp.loss_pct and rng.random() * 100.0 < imp.loss_pct:
            counters.dropped_by_loss += 1
            return None
        if imp.corrupt_pct and rng.random() * 100.0 < imp.corrupt_pct:
            changed = corrupt(frame, rng)
            if changed is not None:
                frame = changed
                counters.corrupted += 1
        if not imp.shapes_time and not self.queue:
            return frame
        if len(self.queue) >= self.queue_limit:
            counters.dropped_queue += 1
            return None
        self.last_release = max(now + release_delay(imp, rng), self.last_release)
        self.queue.append((self.last_release, frame))
        return None

    def head(self, now: float) -> tuple[float, bytes | None]:
        """``(0, frame)`` if the queue's head may go now, else ``(seconds to wait, None)``.

        ``(inf, None)``: the queue is empty. A frame returned is charged to the rate limit and
        stays queued until :meth:`sent` (so nothing overtakes it meanwhile).
        """
        if not self.queue:
            return math.inf, None
        release, frame = self.queue[0]
        wait = max(release - now, self.bucket.wait(now))
        if wait > 0:
            return wait, None
        self.bucket.take(len(frame), now)
        return 0.0, frame

    def sent(self) -> None:
        """The head returned by :meth:`head` has left (or was dropped while sending)."""
        self.queue.popleft()
