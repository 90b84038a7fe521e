"""A total deadline for a network exchange, enforced by cutting its socket.

Socket timeouts bound each read; a peer that sends a byte just before each one
expires (or greets never, after accepting) could hold a send forever. A watchdog
shuts the attached socket when the deadline passes, which ends any blocked call
at once; the caller then reports the deadline, not a vague disconnect. One
watchdog thread serves every deadline in the process.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
from typing import Any


class _Watchdog:
    """Sleeps until the nearest deadline, expires it, repeats; started on first use."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._heap: list[tuple[float, int, Deadline]] = []
        self._counter = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: Deadline) -> None:
        with self._condition:
            # The thread sleeps until the nearest deadline: woken only when this one is
            # nearer (not once per request: requests with one timeout come in order).
            nearer = not self._heap or deadline.expires_at < self._heap[0][0]
            heapq.heappush(self._heap, (deadline.expires_at, next(self._counter), deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="afs-deadlines", daemon=True)
                self._thread.start()
            elif nearer:
                self._condition.notify()

    def _run(self) -> None:
        while True:
            with self._condition:
                while True:
                    while self._heap and self._heap[0][2].finished:
                        heapq.heappop(self._heap)  # ended in time
                    if not self._heap:
                        self._condition.wait(30.0)
                        if not self._heap:
                            self._thread = None
                            return
                        continue
                    wait = self._heap[0][0] - time.monotonic()
                    if wait <= 0:
                        _, _, due = heapq.heappop(self._heap)
                        break
                    self._condition.wait(wait)
            due._expire()


_WATCHDOG = _Watchdog()


class Deadline:
    """``with Deadline(10) as deadline: ... deadline.attach(conn)`` (anything with ``.sock``)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expires_at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._holder: Any = None
        self._fd = -1
        self._expired = False
        self.finished = False

    def __enter__(self) -> Deadline:
        _WATCHDOG.watch(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.detach()

    def detach(self) -> None:
        """The exchange is over: the deadline lets go of its socket, before that socket
        is closed or handed to another exchange (its descriptor number may be reused
        at once: shutting it later would cut someone else's connection)."""
        with self._lock:
            self.finished = True
            self._holder = None
            self._fd = -1

    @property
    def expired(self) -> bool:
        return self._expired or time.monotonic() >= self.expires_at

    def left(self) -> float:
        """Seconds left; zero or less once the deadline has passed."""
        return self.expires_at - time.monotonic()

    def remaining(self, minimum: float = 0.05) -> float:
        """Seconds left (at least ``minimum``, so a socket timeout is never zero)."""
        return max(self.expires_at - time.monotonic(), minimum)

    def attach(self, holder: Any) -> None:
        """Watch ``holder.sock``, whatever socket it holds when the deadline passes.

        Call it again once the holder has a socket (after connecting): the file
        descriptor is remembered, because wrapping a socket in TLS detaches the
        object the holder still points at while the handshake runs.
        """
        with self._lock:
            if self.finished:
                return
            self._holder = holder
            fd = _fileno(holder)
            if fd >= 0:
                self._fd = fd
            if self._expired:
                _shut(holder, self._fd)

    def _expire(self) -> None:
        with self._lock:
            if self.finished:
                return
            self._expired = True
            if self._holder is not None:
                _shut(self._holder, self._fd)


def _fileno(holder: Any) -> int:
    sock = getattr(holder, "sock", None)
    try:
        return sock.fileno() if sock is not None else -1
    except (OSError, ValueError):
        return -1


def _shut(holder: Any, remembered_fd: int = -1) -> None:
    """Shut the holder's socket for reading and writing; every blocked call returns."""
    fd = _fileno(holder)
    if fd < 0:
        fd = remembered_fd
    if fd < 0:
        return
    try:
        # A socket object borrowing the descriptor: shut it, then let go without closing.
        borrowed = socket.socket(fileno=fd)
    except OSError:
        return
    try:
        borrowed.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        borrowed.detach()
