"""The progress watchdog: notices a run that stopped making progress, and its recovery.

Training code marks progress (every event it sends, ``log_metrics``, the framework
callbacks' step hooks) with one clock read and one attribute write: no lock on the
caller's thread. One daemon thread sleeps until the moment the run would have been
silent for ``stall_after`` seconds, looks, and sleeps again; it wakes early only to
stop, or when progress comes back after a stall (or after the run ended). A stall is
told once; the first progress after it is told once; then a new stall can be told.

A forked child (a data-loader worker) has no watchdog thread and inherits none of its
state: its copy is stopped, so it never reports the parent's run as stalled.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from afs_core.clock import SYSTEM_CLOCK, Clock
from afs_core.events import EventCategory, EventType, NotificationEvent

if TYPE_CHECKING:
    from traceback import FrameSummary

logger = logging.getLogger("afs.progress")

#: Events that are not the run's own progress: the watchdog's, and what monitors on
#: their own threads observe of the machine (a hung run's GPU going idle, say).
NOT_PROGRESS = frozenset({EventType.TRAINING_STALLED, EventType.TRAINING_PROGRESS_RESUMED})
#: Events after which a run cannot stall: it ended; the next progress watches again.
RUN_ENDED = frozenset({EventType.TRAINING_COMPLETED, EventType.TRAINING_FAILED, EventType.TRAINING_PAUSED,
                       EventType.OUT_OF_MEMORY})


def counts_as_progress(event: NotificationEvent) -> bool:
    return event.event_type not in NOT_PROGRESS and event.category is not EventCategory.RESOURCE


def main_thread_stack() -> list[FrameSummary] | None:
    """The main thread's current stack (``traceback.FrameSummary`` items, innermost last),
    read from the interpreter's own frames; None when the main thread has ended."""
    import traceback

    main = threading.main_thread()
    frame = sys._current_frames().get(main.ident) if main.ident is not None and main.is_alive() else None
    if frame is None:
        return None
    try:
        return list(traceback.extract_stack(frame))
    finally:
        del frame  # no reference cycle through the frame's locals


class ProgressWatchdog:
    """Calls ``on_stall(silent_for)`` once when no progress was marked for ``stall_after``
    seconds, and ``on_resume(stalled_for)`` once at the first progress after that.

    ``clock`` (``afs_core.testing.ManualClock`` in tests) gives the time and the waits.
    :meth:`check` is one look, as the thread takes it; it returns how long to sleep.
    """

    def __init__(
        self,
        stall_after: float,
        on_stall: Callable[[float], object],
        on_resume: Callable[[float], object],
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if isinstance(stall_after, bool) or not (isinstance(stall_after, (int, float)) and math.isfinite(stall_after)
                                                 and stall_after > 0):
            raise ValueError(f"stall_after must be a positive number of seconds, got {stall_after!r}")
        self.stall_after = float(stall_after)
        self.clock = clock
        self._on_stall, self._on_resume = on_stall, on_resume
        self._last = clock.monotonic()  # when progress was last marked (watching counts as progress)
        self._stalled_at: float | None = None  # the last progress before the stall that was told
        self._resting = False  # the run ended: no stall until progress comes again
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._looking = threading.Lock()  # one look at a time (the thread's, a test's); never the caller's
        self._thread: threading.Thread | None = None
        _WATCHDOGS.add(self)

    # -- the caller's side ---------------------------------------------------------------

    def mark(self) -> None:
        """Progress now. The thread is woken only when a stall was told or the run had ended."""
        self._last = self.clock.monotonic()
        if self._stalled_at is not None or self._resting:
            self._resting = False
            self._wake.set()

    def rest(self) -> None:
        """The run ended: no stall is told (nor its end) until progress is marked again."""
        self._resting = True
        self._wake.set()

    @property
    def stalled(self) -> bool:
        """Whether a stall was told and no progress has come since (its end not yet told)."""
        return self._stalled_at is not None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping.is_set()

    # -- the thread -------------------------------------------------------------------

    def start(self) -> ProgressWatchdog:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="afs-watchdog", daemon=True)
            self._thread.start()
            atexit.register(_stop_at_exit, weakref.ref(self))  # the exit's flush is not a stall
        return self

    def stop(self, timeout: float | None = 1.0) -> None:
        """Stop watching; a recovery already marked is still told. Waits up to ``timeout``
        seconds for the thread (not when called from it)."""
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() and thread.is_alive():
            thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()  # before looking: a mark() after the look wakes the wait below
            wait = self.check()
            self.clock.wait(self._wake, wait)
        self.check(stall=False)  # progress came just before the stop: its recovery is told

    def check(self, *, stall: bool = True) -> float:
        """Look once: tell a stall or a recovery when one is due. Returns the seconds until
        the next look is needed (the stall's deadline; while stalled or resting, the
        threshold again: a wake-up comes first when progress does)."""
        with self._looking:
            return self._look(stall)

    def _look(self, stall: bool) -> float:
        now = self.clock.monotonic()
        last = self._last
        stalled_at = self._stalled_at
        if stalled_at is not None:
            if self._resting:  # the run ended while stalled: nothing more to tell
                self._stalled_at = None
            elif last != stalled_at:
                self._tell(self._on_resume, last - stalled_at)
                self._stalled_at = None
                return max(last + self.stall_after - now, 0.0)
            return self.stall_after
        if self._resting:
            return self.stall_after
        silent = now - last
        if silent < self.stall_after:
            return self.stall_after - silent
        if not stall or self._stopping.is_set():
            return self.stall_after
        self._stalled_at = last
        if self._last != last:  # progress came while deciding: no stall after all
            self._stalled_at = None
            return 0.0
        self._tell(self._on_stall, silent)
        return self.stall_after

    def _tell(self, callback: Callable[[float], object], seconds: float) -> None:
        try:
            callback(seconds)
        except Exception:  # the watchdog outlives a failing report
            logger.exception("afs: the progress watchdog could not report")

    def _after_fork_in_child(self) -> None:
        # The child has no watchdog thread; its copy must neither fire nor wait on a lock
        # the parent's thread held at the fork.
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stopping.set()
        self._looking = threading.Lock()
        self._stalled_at = None
        self._resting = False


_WATCHDOGS: weakref.WeakSet[ProgressWatchdog] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for watchdog in list(_WATCHDOGS):
        watchdog._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _stop_at_exit(ref: weakref.ref[ProgressWatchdog]) -> None:
    watchdog = ref()
    if watchdog is not None:
        watchdog.stop(timeout=0.5)
