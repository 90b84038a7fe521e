"""The delivery engine: training code never waits and nothing is lost.

``submit`` appends the event to this process's journal and returns. An ingest
thread moves journal lines into the SQLite store; one worker thread per channel
claims that channel's due deliveries, keeps to the channel's rate and quiet
policy, delivers through the hooks, and records the outcome: delivered, filtered,
retried later with backoff, or dead with the reason. A slow or dead channel only
ever occupies its own worker.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

from afs_core.dispatch import deliver_event, report_failure
from afs_core.errors import PermanentDeliveryError
from afs_core.events import NotificationEvent, NotificationLevel
from afs_core.formatting import format_duration
from afs_core.journal import Journal, read_whole
from afs_core.pacing import Pacer
from afs_core.quiet import ChannelPolicy, Throttle
from afs_core.results import ChannelOutcome, DeliveryStatus
from afs_core.retry import RetryPolicy
from afs_core.store import DEAD, DELIVERED, FILTERED, PENDING, Claimed, Store, owner_id

if TYPE_CHECKING:
    from afs_core.channel import Channel
    from afs_core.plugins import PluginHost

logger = logging.getLogger("afs.engine")

POLL_SECONDS = 1.0  # how often an idle worker looks for work other processes left
ORPHAN_SCAN_SECONDS = 5.0
LEASE_SECONDS = 120.0
INGEST_SECONDS = 0.02  # how often accepted events move from the journal into the store
PRUNE_SECONDS = 3600.0


class Tracker:
    """What became of one submitted event, per channel; ``wait`` blocks until all are final."""

    def __init__(self, event_id: str, channels: Sequence[str]) -> None:
        self.event_id = event_id
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._final: set[str] = set()
        self.channels = tuple(channels)
        self.outcomes: dict[str, ChannelOutcome] = {c: ChannelOutcome(c, DeliveryStatus.PENDING) for c in channels}
        if not channels:
            self._done.set()

    def update(self, outcome: ChannelOutcome, final: bool) -> None:
        with self._lock:
            self.outcomes = {**self.outcomes, outcome.channel: outcome}
            if final:
                self._final.add(outcome.channel)
            if self._final >= set(self.channels):
                self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)


def _final_outcome(channel: str, status: str, reason: str | None) -> ChannelOutcome:
    return ChannelOutcome(channel, DeliveryStatus.FILTERED if status == FILTERED else DeliveryStatus.FAILED, error=reason)


class _Worker(threading.Thread):
    """Delivers one channel's deliveries, one at a time, in order."""

    def __init__(self, engine: DeliveryEngine, name: str, channel: Channel, policy: ChannelPolicy) -> None:
        super().__init__(name=f"afs-{name}", daemon=True)
        self.engine, self.channel_name, self.channel, self.policy = engine, name, channel, policy
        self.pacer = Pacer(getattr(channel, "rate_limit", None))
        self.throttle = Throttle(policy.throttle_window, policy.throttled)
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.idle = threading.Event()
        self.owner = ""
        # Outcomes waiting to be written: (id, status, error, next attempt, outcome, (event id, final)).
        self._done: list[tuple[int, str, str | None, float | None, ChannelOutcome | None, tuple[str, bool]]] = []
        self._done_since = time.monotonic()

    def run(self) -> None:
        self.owner = owner_id()
        store = self.engine.store
        while not self.stopping.is_set():
            try:
                claimed = store.claim(self.channel_name, self.owner, limit=32, lease=LEASE_SECONDS)
            except Exception:
                logger.exception("afs: the store could not be read; %s retries shortly", self.name)
                claimed = []
            if not claimed:
                self.idle.set()
                self._sleep_until_due()
                continue
            self.idle.clear()
            claimed_at = time.time()
            for index, item in enumerate(claimed):
                if self.stopping.is_set():
                    for rest in claimed[index:]:
                        store.release(rest.delivery_id, self.owner)
                    break
                # Slow sends can outlast the lease on the rest of the batch: renew it
                # before it runs low, and skip what another process has taken meanwhile.
                if time.time() - claimed_at > LEASE_SECONDS / 3:
                    if not store.extend(item.delivery_id, self.owner, LEASE_SECONDS):
                        continue
                    claimed_at = time.time()
                try:
                    self._handle(item)
                except Exception:  # a bug here must not end the worker
                    logger.exception("afs: delivery %s to %r could not be handled", item.delivery_id, self.channel_name)
                    store.release(item.delivery_id, self.owner)
                if len(self._done) >= 16 or time.monotonic() - self._done_since > 0.2:
                    self._record()
            self._record()
        self._record()
        self.idle.set()

    def _record(self) -> None:
        """Write finished outcomes in one transaction, then tell the waiting callers."""
        if not self._done:
            return
        done, self._done = self._done, []
        try:
            held = self.engine.store.finish_many([(d, s, e, n) for d, s, e, n, _, _ in done], self.owner)
        except Exception:
            # The leases run out and the deliveries are attempted again: at least once.
            logger.exception("afs: outcomes of %d deliveries to %r could not be recorded", len(done), self.channel_name)
            return
        for ok, (_, _, _, _, outcome, (event_id, final)) in zip(held, done):
            if ok and outcome is not None:
                self.engine.track(event_id, outcome, final=final)

    def _sleep_until_due(self) -> None:
        try:
            due = self.engine.store.next_due(self.channel_name)
        except Exception:
            due = None
        wait = POLL_SECONDS if due is None else min(max(due - time.time(), 0.0), POLL_SECONDS)
        if wait <= 0:
            # Due, yet nothing could be claimed: another live process holds the leases.
            wait = 0.25
        if wait > 0:
            self.wake.wait(wait)
            self.wake.clear()

    def _pace(self) -> bool:
        while True:
            wait = self.pacer.wait_time()
            if wait <= 0:
                return True
            if self.stopping.wait(wait):
                return False

    def _handle(self, item: Claimed) -> None:
        store, event = self.engine.store, item.event
        if not self.policy.admits(event):
            self._finish(item, FILTERED, "held back by this channel's level or event-type settings")
            return
        # Only a first attempt is judged: a retry is the same event, not a repeat of it.
        send, digest = self.throttle.check(event) if item.attempts == 0 else (True, None)
        if not send:
            self._finish(item, FILTERED, "throttled: a repeat within the window")
            return
        if digest:
            event = event.evolve(context={**event.context, "held_back": digest})
        if not self._pace():
            store.release(item.delivery_id, self.owner)
            return
        outcome = deliver_event(self.engine.plugins, self.channel_name, self.channel, event, report=False)
        if outcome.status is DeliveryStatus.DELIVERED:
            self._finish(item, DELIVERED, None, outcome)
        elif outcome.status is DeliveryStatus.FILTERED:
            self._finish(item, FILTERED, "held back by a plugin's afs_filter_event", outcome)
        else:
            self._failed(item, event, outcome)

    def _failed(self, item: Claimed, event: NotificationEvent, outcome: ChannelOutcome) -> None:
        attempts = item.attempts + 1
        retry = self.engine.retry
        age = time.time() - item.created
        if outcome.permanent or retry.gives_up(attempts, age):
            why = outcome.error or "failed"
            if not outcome.permanent:
                why = f"gave up after {attempts} attempts: {why}"
            logger.warning("afs: %s to %r failed for good: %s", event.event_type.value, self.channel_name, why)
            self._finish(item, DEAD, why, ChannelOutcome(self.channel_name, DeliveryStatus.FAILED, error=why,
                                                         permanent=True, retry_after=outcome.retry_after))
            report_failure(self.engine.plugins, event, self.channel, PermanentDeliveryError(why, retry_after=outcome.retry_after))
            return
        delay = retry.delay(attempts, outcome.retry_after)
        pending = ChannelOutcome(self.channel_name, DeliveryStatus.PENDING, error=outcome.error,
                                 retry_after=outcome.retry_after)
        self._queue(item, PENDING, outcome.error, time.time() + delay, pending, final=False)
        logger.info("afs: %r will retry in %.1f s (attempt %d): %s", self.channel_name, delay, attempts, outcome.error)

    def _finish(self, item: Claimed, status: str, reason: str | None, outcome: ChannelOutcome | None = None) -> None:
        self._queue(item, status, reason, None, outcome or _final_outcome(self.channel_name, status, reason), final=True)

    def _queue(self, item: Claimed, status: str, error: str | None, next_attempt: float | None,
               outcome: ChannelOutcome, *, final: bool) -> None:
        if not self._done:
            self._done_since = time.monotonic()
        self._done.append((item.delivery_id, status, error, next_attempt, outcome, (item.event.event_id, final)))


class DeliveryEngine:
    """Background delivery for one manager over one store.

    :param retry: when to retry and when to give up.
    :param flush_timeout: seconds spent at interpreter exit delivering what is pending.
    """

    def __init__(
        self,
        store: Store,
        plugins: PluginHost,
        *,
        retry: RetryPolicy | None = None,
        flush_timeout: float = 10.0,
        retention: tuple[float, int] = (30 * 86400.0, 10_000),
    ) -> None:
        self.store = store
        self.plugins = plugins
        self.retry = retry or RetryPolicy()
        self.flush_timeout = flush_timeout
        self.journal = Journal(store.path.parent / "journal")
        self._workers: dict[str, _Worker] = {}
        self._trackers: weakref.WeakValueDictionary[str, Tracker] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self._ingest_lock = threading.Lock()
        self._ingest_wake = threading.Event()
        self._stopping = threading.Event()
        self._closed = False
        self._forked = False
        self._pid = os.getpid()
        self.retention = retention
        _ENGINES.add(self)
        self._ingester = threading.Thread(target=self._ingest_loop, name="afs-ingest", daemon=True)
        self._ingester.start()
        atexit.register(_close_at_exit, weakref.ref(self))

    # -- channels ----------------------------------------------------------------------

    def attach(self, name: str, channel: Channel, policy: ChannelPolicy) -> None:
        """Deliver ``name``'s deliveries with ``channel`` (replacing an earlier one)."""
        with self._lock:
            old = self._workers.pop(name, None)
            if old is not None:
                old.stopping.set()
                old.wake.set()
            worker = _Worker(self, name, channel, policy)
            self._workers[name] = worker
            worker.start()

    def detach(self, name: str) -> None:
        with self._lock:
            worker = self._workers.pop(name, None)
        if worker is not None:
            worker.stopping.set()
            worker.wake.set()

    # -- submitting --------------------------------------------------------------------

    def submit(self, event: NotificationEvent, channels: Sequence[str]) -> Tracker:
        """Accept ``event`` for ``channels``: once this returns it survives a crash."""
        self._ensure_running()
        tracker = Tracker(event.event_id, channels)
        if channels:
            self._trackers[event.event_id] = tracker
            # No wake-up here: the ingest thread looks every INGEST_SECONDS, so a burst of
            # notify() calls is not interrupted by a thread switch per call.
            self.journal.append({"event": event.to_dict(), "channels": list(channels), "at": time.time()})
        return tracker

    def submit_or_join(self, event: NotificationEvent, channels: Sequence[str], *, dedup_key: str,
                       since: float, not_before: float) -> Tracker | str:
        """Store ``event`` for a failure other ranks may join, or join theirs (returns its id)."""
        self._ensure_running()
        if self._forked:
            return self.submit(event, channels)
        joined = self.store.enqueue_or_join(event, channels, dedup_key=dedup_key, since=since, not_before=not_before)
        if joined is not None:
            return joined
        tracker = Tracker(event.event_id, channels)
        self._trackers[event.event_id] = tracker
        self._wake(channels)
        return tracker

    def track(self, event_id: str, outcome: ChannelOutcome, final: bool) -> None:
        tracker = self._trackers.get(event_id)
        if tracker is not None:
            tracker.update(outcome, final)

    def _wake(self, channels: Sequence[str] | set[str]) -> None:
        for name in channels:
            worker = self._workers.get(name)
            if worker is not None:
                worker.wake.set()

    # -- ingesting ---------------------------------------------------------------------

    def _ingest_loop(self) -> None:
        last_scan = 0.0
        last_prune = 0.0
        while not self._stopping.is_set():
            if time.monotonic() - last_prune >= PRUNE_SECONDS or last_prune == 0.0:
                last_prune = time.monotonic()
                try:  # bounded history: by age and by count, finished deliveries only
                    self.store.prune(max_age=self.retention[0], max_events=self.retention[1])
                except Exception:
                    logger.exception("afs: old history could not be pruned")
            self._ingest_wake.wait(INGEST_SECONDS)
            self._ingest_wake.clear()
            try:
                now = time.monotonic()
                self.ingest(orphans=now - last_scan >= ORPHAN_SCAN_SECONDS)
                if now - last_scan >= ORPHAN_SCAN_SECONDS:
                    last_scan = now
            except Exception:
                logger.exception("afs: journal could not be moved into the store; retrying")
                self._stopping.wait(1.0)

    def ingest(self, orphans: bool = False) -> None:
        """Move journal lines (this process's, and dead processes' when asked) into the store."""
        with self._ingest_lock:
            records = self.journal.read_new()
            if records:
                self._wake(self.store.ingest(records))
            if orphans:
                for path in self.journal.orphans():
                    leftover = read_whole(path)
                    if leftover:
                        self._wake(self.store.ingest(leftover))
                        logger.info("afs: picked up %d events a stopped process left in %s", len(leftover), path.name)
                    path.unlink(missing_ok=True)

    # -- flushing and closing ------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every due delivery of this process's channels was attempted.

        Returns False if ``timeout`` passed first; deliveries scheduled for later
        (a retry, a long Retry-After) stay pending in the store either way.
        """
        self._ensure_running()
        if self._forked:
            return False  # left to the parent, once this process has exited
        deadline = None if timeout is None else time.monotonic() + timeout
        self.ingest()
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.idle.clear()
            worker.wake.set()
        for worker in workers:
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                if worker.idle.wait(0.1 if remaining is None else min(remaining, 0.1)):
                    due = self.store.next_due(worker.channel_name)
                    if due is None or due > time.time() or not worker.is_alive():
                        break
                    worker.idle.clear()
                    worker.wake.set()
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Flush up to ``timeout`` seconds, then stop; what is left stays pending for next time."""
        if self._closed:
            return True
        self._ensure_running()
        if self._forked:
            self._closed = True
            self.journal.close()  # kept on disk: nothing of it was moved into the store here
            return False
        budget = self.flush_timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        flushed = self.flush(budget)
        if self._send_digests():  # what the throttle held back, once everything else went
            flushed = self.flush(max(deadline - time.monotonic(), 0.0)) and flushed
        self._closed = True
        self._stopping.set()
        self._ingest_wake.set()
        with self._lock:
            workers = list(self._workers.values())
            self._workers.clear()
        for worker in workers:  # all told at once, then joined against one deadline
            worker.stopping.set()
            worker.wake.set()
        for thread in [*workers, self._ingester]:
            thread.join(timeout=max(deadline - time.monotonic(), 0.05))
        self.ingest()  # anything appended while stopping
        self.journal.close()
        return flushed

    def _send_digests(self) -> int:
        """Repeats held back with no later event to tell of them: one summary each."""
        with self._lock:
            workers = list(self._workers.values())
        sent = 0
        for worker in workers:
            for event_type, run_id, count in worker.throttle.pending_digests():
                label = event_type.value.replace("_", " ")
                summary = NotificationEvent(
                    event_type, f"{count} more '{label}' held back", f"{count} more '{label}' events were not sent "
                    f"one by one in the last {format_duration(worker.throttle.window)}.",
                    run_id=run_id, context={"held_back": f"{count} more '{label}'"},
                )
                self.submit(summary, [worker.channel_name])
                sent += 1
        return sent

    def _ensure_running(self) -> None:
        """A forked child (a data-loader worker, say) only appends to its own journal.

        It must not touch SQLite: a thread of the parent may have held one of SQLite's
        mutexes at the moment of the fork, and the child would wait on it for ever.
        What the child accepted is delivered by the parent's engine (or the next one)
        once the child has exited, like any stopped process's journal.
        """
        if self._pid != os.getpid():
            self._forked = True


_ENGINES: weakref.WeakSet[DeliveryEngine] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Locks held by threads that do not exist in the child would stay held for ever.
    for engine in list(_ENGINES):
        engine._lock = threading.Lock()
        engine._ingest_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_at_exit(ref: weakref.ref[DeliveryEngine]) -> None:
    engine = ref()
    if engine is not None and not engine._closed:
        try:
            if not engine.close():
                logger.warning("afs: some notifications are still pending at exit; the next run delivers them")
        except Exception:
            logger.exception("afs: could not flush notifications at exit")


def apply_rank_policy(event: NotificationEvent, all_ranks: bool) -> str | None:
    """Why ``event`` is held back on this rank, or ``None`` when it goes out."""
    if all_ranks or event.source.is_main_process or event.level >= NotificationLevel.ERROR:
        return None
    return f"held back on rank {event.source.rank}: only the main process sends below ERROR"


def failure_key(event: NotificationEvent) -> str | None:
    """The same failure seen from several ranks of one run shares this key."""
    size = event.source.world_size or 0
    if size <= 1 or event.level < NotificationLevel.ERROR or not event.run_id:
        return None
    return f"{event.run_id}|{event.event_type.value}|{event.error_details or event.title}"

