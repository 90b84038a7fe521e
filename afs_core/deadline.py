"""A total deadline for a network exchange, enforced by cutting its socket.

Socket timeouts bound each read; a peer that sends a byte just before each one
expires (or greets never, after accepting) could hold a send forever. A watchdog
shuts the attached socket when the deadline passes, which ends any blocked call
at once; the caller then reports the deadline, not a vague disconnect.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any


class Deadline:
    """``with Deadline(10) as deadline: ... deadline.attach(conn)`` (anything with ``.sock``)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expires_at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._holder: Any = None
        self._expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()

    @property
    def expired(self) -> bool:
        return self._expired or time.monotonic() >= self.expires_at

    def remaining(self, minimum: float = 0.05) -> float:
        """Seconds left (at least ``minimum``, so a socket timeout is never zero)."""
        return max(self.expires_at - time.monotonic(), minimum)

    def attach(self, holder: Any) -> None:
        """Watch ``holder.sock``, whatever socket it holds when the deadline passes."""
        with self._lock:
            self._holder = holder
            if self._expired:
                _shut(holder)

    def _expire(self) -> None:
        with self._lock:
            self._expired = True
            if self._holder is not None:
                _shut(self._holder)


def _shut(holder: Any) -> None:
    sock = getattr(holder, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
