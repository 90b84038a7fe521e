"""Keeping to a channel's declared rate: a token bucket per channel worker.

A channel says how fast it may send (:class:`~afs_core.channels.base.RateLimit`);
a burst of events then goes out at the service's pace instead of provoking a
storm of 429s.
"""

from __future__ import annotations

import threading

from afs_core.channels.base import RateLimit
from afs_core.clock import SYSTEM_CLOCK, Clock


class Pacer:
    """Waits until a send is allowed under ``limit`` (thread-safe)."""

    def __init__(self, limit: RateLimit | None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = float(limit.burst) if limit else 0.0
        self._stamp = clock.monotonic()

    def wait_time(self) -> float:
        """Seconds until the next send may go; takes the token when that is 0."""
        if self.limit is None:
            return 0.0
        with self._lock:
            now = self._clock.monotonic()
            self._tokens = min(self.limit.burst, self._tokens + (now - self._stamp) * self.limit.per_second)
            self._stamp = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.limit.per_second


def pace_target(name: str, channel: object) -> str:
    """Who a channel's rate belongs to: its service endpoint (a webhook's URL), hashed
    so no secret is kept; processes sharing a store pace one target together."""
    import hashlib

    where = next((value for value in (getattr(channel, attr, None) for attr in ("webhook_url", "url", "urls"))
                  if value), None)
    if where is None:
        describe = getattr(channel, "describe", None)
        where = describe() if callable(describe) else type(channel).__qualname__
    return f"{name}:{hashlib.sha256(repr(where).encode()).hexdigest()[:24]}"
