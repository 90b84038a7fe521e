"""Time for the delivery engine and the store, in one object tests can replace.

Backoff, Retry-After waits, the rank merge hold, leases, pacing and flush
deadlines all read the time and wait through a :class:`Clock`, so a test can move
time forward (``afs_core.testing.ManualClock``) instead of sleeping through it.
"""

from __future__ import annotations

import threading
import time


class Clock:
    """The system's clock: wall time, monotonic time, and waiting on an event."""

    def time(self) -> float:
        """Seconds since the epoch: stored timestamps, due times and leases."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds that never go back: pacing, throttling and deadlines."""
        return time.monotonic()

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        """Wait until ``event`` is set or ``timeout`` seconds of this clock passed."""
        return event.wait(timeout)


SYSTEM_CLOCK = Clock()
