"""Logging a failure that repeats once, with a count, instead of once per event.

A full disk or a dead channel fails for every event of a burst; thousands of
identical lines hide the one a person needs. The first occurrence of a kind is
logged at once; later ones within the window are counted, and the next line of
that kind (or :meth:`RepeatedLog.summarize`) says how many there were.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable

WINDOW_SECONDS = 60.0


class RepeatedLog:
    """Logs to ``logger``; one line per ``key`` per ``window`` seconds."""

    def __init__(self, logger: logging.Logger, window: float = WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (when its last line was written, repeats since, level, message)
        self._seen: dict[Hashable, tuple[float, int, int, str]] = {}

    def log(self, level: int, key: Hashable, message: str, *args: object) -> bool:
        """Log ``message % args`` unless a line for ``key`` was written within the
        window (then only count it). Returns whether a line was written."""
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.window:
                self._seen[key] = (seen[0], seen[1] + 1, level, message % args if args else message)
                return False
            repeats = seen[1] if seen is not None else 0
            self._seen[key] = (now, 0, level, "")
        text = message % args if args else message
        if seen is not None and repeats:
            text += _repeated(repeats, now - seen[0])
        self.logger.log(level, "%s", text)
        return True

    def summarize(self) -> None:
        """Write the counts still untold (at close), each under its last message."""
        now = self._clock()
        with self._lock:
            pending = [(k, v) for k, v in self._seen.items() if v[1]]
            for key, (_, _, level, _) in pending:
                self._seen[key] = (now, 0, level, "")
        for _, (since, repeats, level, message) in pending:
            self.logger.log(level, "%s", message + _repeated(repeats, now - since))


def _repeated(count: int, seconds: float) -> str:
    return f" (and {count:,} more times in the last {max(seconds, 1.0):,.0f} s)"
