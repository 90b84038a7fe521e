"""When to try a failed delivery again, and when to stop.

Exponential backoff with full jitter spreads retries out; a service's own
Retry-After is honoured, and one too long for a run to wait on leaves the
delivery pending for later instead of holding anything up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import random


class RetryPolicy(NamedTuple):
    """``max_attempts`` tries in all, within ``max_age`` seconds of the event."""

    max_attempts: int = 8
    base: float = 1.0
    cap: float = 300.0
    max_age: float = 24 * 3600.0
    max_retry_after: float = 24 * 3600.0

    def delay(self, attempts: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds before the next try after ``attempts`` failed tries."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        ceiling = min(self.cap, self.base * (2 ** max(attempts - 1, 0)))
        if rng is None:
            import random  # here, not at the top: a training process's start does not need it

            return random.uniform(0, ceiling)
        return rng.uniform(0, ceiling)

    def gives_up(self, attempts: int, age: float) -> bool:
        return attempts >= self.max_attempts or age >= self.max_age
