"""The delivery engine: training code never waits and nothing is lost.

``submit`` appends the event to this process's journal and returns. An ingest
thread moves journal lines into the SQLite store; one worker thread per channel
claims that channel's due deliveries, keeps to the channel's rate and quiet
policy, delivers through the hooks, and records the outcome: delivered, filtered,
retried later with backoff, or dead with the reason. A slow or dead channel only
ever occupies its own worker.

When the journal or the store cannot be written (a full disk), events go on being
delivered from a store in memory, said once, until writing works again.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import datetime as dt
import errno
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from afs_core.clock import Clock
from afs_core.delivery import ranks
from afs_core.delivery.dispatch import batch_size_for, deliver_events, report_failure
from afs_core.delivery.journal import Journal, take_orphans
from afs_core.delivery.memory import StoredMemory
from afs_core.delivery.metrics import MetricEntry, MetricRow, rows_from_entries, split_rows
from afs_core.delivery.pacing import Pacer, pace_target
from afs_core.delivery.policy import ChannelPolicy, Throttle
from afs_core.delivery.repeats import RepeatedLog
from afs_core.delivery.retry import RetryPolicy
from afs_core.delivery.store import Claimed, PendingSummary, Store, owner_id
from afs_core.errors import PermanentDeliveryError
from afs_core.events import NotificationEvent
from afs_core.formatting import format_duration
from afs_core.results import ChannelOutcome, DeliveryStatus, NotifyResult

if TYPE_CHECKING:
    from afs_core.channels.base import Channel
    from afs_core.plugins import PluginHost

logger = logging.getLogger("afs.engine")

POLL_SECONDS = 1.0  # how often an idle worker looks for work other processes left ...
IDLE_POLL_SECONDS = 4.0  # ... doubling up to this while the store holds none for its channel
RECORD_GROUP = 16  # outcomes of deliveries that went out, written in one transaction ...
RECORD_SECONDS = 0.02  # ... or after this long, whichever comes first
ORPHAN_SCAN_SECONDS = 5.0
LEASE_SECONDS = 120.0
# notify() wakes the ingest thread; without a wake-up it looks this often (a busy store
# to retry, log_metrics values to record), so an idle engine costs next to nothing.
INGEST_SECONDS = 0.5
#: A batch that sent none of its messages (each NotSent): the wait before the next try;
#: and how many tries a claim's deliveries get (per delivery) before they are let go.
NOTHING_SENT_PAUSE = 0.5
MAX_NOT_SENT = 8
# After moving events the ingest thread waits this long, so a stream of events goes in
# batches: each look takes the GIL a dozen times (SQLite lets go of it at every step),
# and each time a busy training thread waits to get it back. The first event after a
# quiet spell is still taken at once; flush() does not wait for this.
BATCH_SECONDS = 0.025
PRUNE_SECONDS = 3600.0
METRICS_HELD = 200_000  # log_metrics calls waiting for the ingest thread, at most
FLUSH_POLL_SECONDS = 0.05  # a flush looks again at least this often
FLUSH_LOOK_SECONDS = 0.02  # ...and at most this often
STORE_ERRORS = (sqlite3.Error, OSError)  # a full disk, a busy or unreadable store


class JournalSource(Protocol):
    """Journal files another process writes, read here (see :mod:`afs_core.delivery.courier`)."""

    def read_new(self) -> list[dict[str, Any]]: ...
    def marks(self) -> dict[str, int]: ...
    def acknowledge(self) -> list[str]: ...


class Tracker:
    """What became of one submitted event, per channel; ``wait`` blocks until all are final."""

    # Made on notify()'s path: only a lock and a tuple. The pending outcomes and the
    # threading.Event a wait needs are made when first asked for.
    __slots__ = ("event_id", "channels", "_lock", "_done", "_final", "_outcomes", "__weakref__")

    def __init__(self, event_id: str, channels: Sequence[str]) -> None:
        self.event_id = event_id
        self.channels = tuple(channels)
        self._lock = threading.Lock()
        self._done: threading.Event | None = None
        self._final: set[str] = set()
        self._outcomes: dict[str, ChannelOutcome] | None = None

    @property
    def outcomes(self) -> dict[str, ChannelOutcome]:
        outcomes = self._outcomes
        if outcomes is None:
            with self._lock:
                if self._outcomes is None:
                    self._outcomes = {c: ChannelOutcome(c, DeliveryStatus.PENDING) for c in self.channels}
                outcomes = self._outcomes
        return outcomes

    def _all_final(self) -> bool:
        return len(self._final) >= len(self.channels) and self._final >= set(self.channels)

    def update(self, outcome: ChannelOutcome, final: bool) -> None:
        current = self.outcomes
        with self._lock:
            self._outcomes = {**(self._outcomes or current), outcome.channel: outcome}
            if final:
                self._final.add(outcome.channel)
            if self._done is not None and self._all_final():
                self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        with self._lock:
            if self._all_final():
                return True
            if self._done is None:
                self._done = threading.Event()
            done = self._done
        return done.wait(timeout)


def _final_outcome(channel: str, status: DeliveryStatus, reason: str | None) -> ChannelOutcome:
    return ChannelOutcome(channel, status, error=reason)


def _merged(channel: str, joined: str) -> ChannelOutcome:
    """A rank's failure joined to the same one another rank stored (event ``joined``)."""
    return ChannelOutcome(channel, DeliveryStatus.FILTERED,
                          error=f"sent once with the same failure from other ranks (event {joined})")


# What a worker has done and must still write down: (store, delivery id, status, error,
# next attempt, outcome to report, event id, final?).
_Done = tuple[Store, int, DeliveryStatus, "str | None", "float | None", "ChannelOutcome | None", str, bool]


class _Worker(threading.Thread):
    """Delivers one channel's deliveries, one at a time, in order."""

    def __init__(self, engine: DeliveryEngine, name: str, channel: Channel, policy: ChannelPolicy) -> None:
        super().__init__(name=f"afs-{name}", daemon=True)
        self.engine, self.channel_name, self.channel, self.policy = engine, name, channel, policy
        self.clock = engine.clock
        self.pacer = Pacer(getattr(channel, "rate_limit", None), clock=engine.clock)
        self.throttle = Throttle(policy.throttle_window, policy.throttled)
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.owner = ""
        self.batch, self.lease = self._batch_and_lease()
        self._pace_target: str | None = None  # hashed on first use: hashlib loads OpenSSL (3 ms)
        self._done: list[_Done] = []
        self._done_since = 0.0  # when the send of the oldest outcome not yet written down began
        self._send_began = 0.0
        self._unwritable = False  # the last write of outcomes failed: the store takes none now
        self._idle_looks = 0  # looks in a row that found nothing pending for this channel

    def run(self) -> None:
        self.owner = owner_id()
        woken = False  # the first look is a look: what stopped processes left, if anything
        while not self.stopping.is_set():
            worked = False
            for store in self.engine.stores():
                claimed = self._claim(store) if woken or self._due(store) else []
                worked = worked or bool(claimed)
                if claimed:
                    self._idle_looks = 0
                self._deliver(store, claimed)
                if self.stopping.is_set():
                    break
            self._record()
            woken = worked or self._sleep_until_due()
        self._record()

    def _due(self, store: Store) -> bool:
        """Whether a look (not woken by work of this process) finds a delivery due: one
        read, where a claim takes the store's write lock to find nothing (four statements,
        each letting the GIL go and taking it back from a busy training thread)."""
        try:
            return store.has_due(self.channel_name)
        except STORE_ERRORS:
            return True  # the claim tries, and says what is wrong

    def _batch_and_lease(self) -> tuple[int, float]:
        """How many deliveries go to the channel at once, and how long a claim holds:
        long enough for the slowest sends of a whole batch (three times as long), or
        another process could take a delivery while it is still being sent. A batch lasts
        ``batch_timeouts`` of the channel's timeouts where it says so, else one a message;
        one message at a time where a plugin's afs_deliver takes each (see batch_size_for)."""
        timeout = getattr(self.channel, "timeout", None)
        per_send = float(timeout) if isinstance(timeout, (int, float)) else 0.0
        batch = batch_size_for(self.engine.plugins, self.channel)
        sends = getattr(self.channel, "batch_timeouts", None) or batch
        return batch, max(self.engine.store.lease_seconds or LEASE_SECONDS, 3 * per_send * max(1, int(sends)))

    def _claim(self, store: Store) -> list[Claimed]:
        self.batch, self.lease = self._batch_and_lease()  # a plugin registered since may deliver each alone
        # Outcomes not yet written down stay leased to this worker: never claimed twice.
        unrecorded = [d[1] for d in self._done if d[0] is store]
        try:
            return store.claim(self.channel_name, self.owner, limit=32, lease=self.lease, skip=unrecorded)
        except STORE_ERRORS as exc:
            self.engine.store_trouble(("claim", self.channel_name), exc, "afs: %r could not take deliveries from "
                                      "the store (%s); it tries again shortly", self.channel_name, exc)
            return []

    def _deliver(self, store: Store, claimed: list[Claimed]) -> None:
        """Deliver what was claimed, ``batch_size`` deliveries at a time. What a batch did
        not get to (NotSent) stays in hand, judged once (level, throttle), and goes first
        in the next batch; after a batch that sent none of its messages, a pause (a
        channel that never gets to any is not asked again and again without end)."""
        renewed_at = self.clock.time()
        lost: set[int] = set()
        waiting = list(claimed)
        # The events as judged of deliveries a batch did not get to, for their next try in
        # this claim: a delivery let go leaves it with them (ids are a store's own, and
        # an in-memory store's start again from one).
        admitted: dict[int, NotificationEvent] = {}
        for _ in range(len(claimed) * MAX_NOT_SENT + 1):  # bounded: each batch sends one, or a pause
            if not waiting:
                return
            if self.stopping.is_set():
                for item in waiting:
                    self._release(store, item)
                return
            chunk: list[Claimed] = []
            try:
                # Slow sends can outlast the leases on the rest of what was claimed, and on
                # what was sent but is not written down yet: renew them all before they run
                # low, and skip what another process took meanwhile.
                if self.clock.time() - renewed_at > self.lease / 3:
                    rest = [item.delivery_id for item in waiting if item.delivery_id not in lost]
                    lost.update(set(rest) - store.extend(rest, self.owner, self.lease))
                    store.extend([d[1] for d in self._done if d[0] is store], self.owner, self.lease)
                    renewed_at = self.clock.time()
                waiting = [item for item in waiting if item.delivery_id not in lost]
                chunk, waiting = waiting[:self.batch], waiting[self.batch:]
                unsent = self._send(store, chunk, admitted)
                waiting = unsent + waiting
                if unsent and len(unsent) == len(chunk):
                    self.stopping.wait(NOTHING_SENT_PAUSE)
            except Exception as exc:  # a bug or a store error here must not end the worker
                if isinstance(exc, STORE_ERRORS):
                    self.engine.store_trouble(("deliver", self.channel_name), exc, "afs: deliveries to %r wait: the "
                                              "store could not be written (%s)", self.channel_name, exc)
                else:
                    logger.exception("afs: deliveries to %r could not be handled", self.channel_name)
                settled = {d[1] for d in self._done if d[0] is store}
                for item in chunk:
                    if item.delivery_id not in settled:
                        self._release(store, item)
            if self._record_now(last=not waiting):
                self._record()
            if self._unwritable and any(d[0] is store for d in self._done):
                # Outcomes this store cannot take now: send no more from it until it can.
                for item in waiting:
                    self._release(store, item)
                return
        for item in waiting:  # asked again and again, sent none: another claim, later
            self._release(store, item)

    def _record_now(self, *, last: bool) -> bool:
        """Whether to write the outcomes down now. Where sends are quick (a relay on the
        same machine or network), deliveries that went out are written in groups, one
        transaction for up to RECORD_GROUP of them, within RECORD_SECONDS of the first
        one's send: a transaction per delivery cost as much as the request. A send that
        took longer, anything but a delivery (a retry, a failure) and the end of what
        was claimed are written at once. So a process killed mid-burst sends again at
        most the send it was in, or, to a quick receiver, the sends of RECORD_SECONDS;
        its leases keep other processes off them meanwhile."""
        done = self._done
        if not done:
            return False
        if last or self.stopping.is_set() or len(done) >= RECORD_GROUP:
            return True
        if self.clock.monotonic() - self._done_since >= RECORD_SECONDS:
            return True
        return any(d[2] is not DeliveryStatus.DELIVERED for d in done)

    def _release(self, store: Store, item: Claimed) -> None:
        try:
            store.release(item.delivery_id, self.owner)
        except STORE_ERRORS:
            pass  # the lease runs out by itself

    def _record(self) -> None:
        """Write finished outcomes, one transaction per store, then tell the waiting
        callers. What cannot be written now is kept and tried again."""
        if not self._done:
            return
        done, self._done = self._done, []
        kept: list[_Done] = []
        recorded = False
        for store in {id(d[0]): d[0] for d in done}.values():
            mine = [d for d in done if d[0] is store]
            try:
                held = store.finish_many([(d[1], d[2], d[3], d[4]) for d in mine], self.owner)
            except STORE_ERRORS as exc:
                self.engine.store_trouble("record", exc, "afs: outcomes of deliveries could not be written to the "
                                          "store (%s); kept and written later", exc)
                kept.extend(mine)
                continue
            recorded = True
            for ok, (_, _, _, _, _, outcome, event_id, final) in zip(held, mine, strict=True):
                if ok and outcome is not None:
                    self.engine.track(event_id, outcome, final=final)
        self._done = kept + self._done
        self._unwritable = bool(kept)
        if recorded:  # a flush looks again; not for a write that failed (it would spin)
            self.engine.progress.set()

    def _sleep_until_due(self) -> bool:
        """Wait until a delivery falls due or a look is due; True when woken (work of this
        process, a flush, a stop) rather than by the time."""
        due = None
        for store in self.engine.stores():
            try:
                when = store.next_due(self.channel_name)
            except STORE_ERRORS:
                continue
            if when is not None and (due is None or when < due):
                due = when
        # Work from this process wakes the worker; the looks are for what other processes
        # left. With none pending at all they grow further apart: each look is a dozen
        # moments the GIL is let go and taken back from a busy training thread.
        if due is None:
            self._idle_looks = min(self._idle_looks + 1, 8)
            wait = min(POLL_SECONDS * 2 ** (self._idle_looks - 1), IDLE_POLL_SECONDS)
        else:
            self._idle_looks = 0
            wait = min(max(due - self.clock.time(), 0.0), POLL_SECONDS)
        if wait <= 0:
            # Due, yet nothing could be claimed: another live process holds the leases.
            wait = 0.25
        if self._done:  # outcomes waiting for the store to take them
            wait = min(wait, 0.5)
        woken = self.clock.wait(self.wake, wait)
        self.wake.clear()
        return woken

    def _pace(self, store: Store) -> bool:
        limit = self.pacer.limit
        if limit is not None:
            if self._pace_target is None:
                self._pace_target = pace_target(self.channel_name, self.channel)
            try:  # a store shared with other processes paces this target for all of them
                shared = store.reserve(self._pace_target, limit.per_second, limit.burst)
            except STORE_ERRORS:
                shared = None  # unreachable for now: this worker paces itself
            if shared is not None:
                return shared <= 0 or not self.clock.wait(self.stopping, shared)
        while True:
            wait = self.pacer.wait_time()
            if wait <= 0:
                return True
            if self.clock.wait(self.stopping, wait):
                return False

    def _send(self, store: Store, chunk: list[Claimed], admitted: dict[int, NotificationEvent]) -> list[Claimed]:
        """Send ``chunk`` and note each outcome; what the channel's batch did not get to
        (still claimed, no attempt counted; its event as judged kept in ``admitted`` for
        its next try)."""
        sending: list[tuple[Claimed, NotificationEvent]] = []
        for item in chunk:
            # Judged once: a second look would take the event for a repeat of itself.
            event = admitted.pop(item.delivery_id, None) or self._admit(store, item)
            if event is not None:
                sending.append((item, event))
        if not sending:
            return []
        if not self._pace(store):
            for item, _ in sending:
                self._release(store, item)
            return []
        self._send_began = self.clock.monotonic()
        outcomes = deliver_events(self.engine.plugins, self.channel_name, self.channel, [e for _, e in sending],
                                  report=False)
        unsent: list[Claimed] = []
        for (item, event), outcome in zip(sending, outcomes, strict=True):
            if outcome.status is DeliveryStatus.DELIVERED:
                self._finish(store, item, DeliveryStatus.DELIVERED, None, outcome)
            elif outcome.status is DeliveryStatus.FILTERED:
                why = outcome.error or "held back by a plugin's afs_filter_event"
                self._finish(store, item, DeliveryStatus.FILTERED, why, outcome)
            elif outcome.status is DeliveryStatus.PENDING:  # not sent: its turn did not come
                admitted[item.delivery_id] = event
                unsent.append(item)
            else:
                self._failed(store, item, event, outcome)
        return unsent

    def _admit(self, store: Store, item: Claimed) -> NotificationEvent | None:
        """The event to send for ``item``, or None when this channel's quiet policy held
        it back (then it is finished as filtered)."""
        event = item.event
        if not self.policy.admits(event):
            self._finish(store, item, DeliveryStatus.FILTERED,
                         "held back by this channel's level or event-type settings")
            return None
        # Only a first attempt is judged: a retry is the same event, not a repeat of it.
        send, digest = self.throttle.check(event, self.clock.monotonic(), store=store, channel=self.channel_name) \
            if item.attempts == 0 else (True, None)
        if not send:
            self._finish(store, item, DeliveryStatus.FILTERED, "throttled: a repeat within the window")
            return None
        return event.evolve(context={**event.context, "held_back": digest}) if digest else event

    def _failed(self, store: Store, item: Claimed, event: NotificationEvent, outcome: ChannelOutcome) -> None:
        attempts = item.attempts + 1
        retry = self.engine.retry
        age = self.clock.time() - item.created
        if outcome.permanent or retry.gives_up(attempts, age):
            why = outcome.error or "failed"
            if not outcome.permanent:
                why = f"gave up after {attempts} attempts: {why}"
            self.engine.log.log(logging.WARNING, ("dead", self.channel_name, why),
                                "afs: %s to %r failed for good: %s", event.event_type.value, self.channel_name, why)
            self._finish(store, item, DeliveryStatus.FAILED, why, ChannelOutcome(
                self.channel_name, DeliveryStatus.FAILED, error=why, permanent=True, retry_after=outcome.retry_after))
            report_failure(self.engine.plugins, event, self.channel,
                           PermanentDeliveryError(why, retry_after=outcome.retry_after))
            return
        delay = retry.delay(attempts, outcome.retry_after)
        pending = ChannelOutcome(self.channel_name, DeliveryStatus.PENDING, error=outcome.error,
                                 retry_after=outcome.retry_after)
        self._queue(store, item, DeliveryStatus.PENDING, outcome.error, self.clock.time() + delay, pending, final=False)
        self.engine.log.log(logging.INFO, ("retry", self.channel_name, outcome.error),
                            "afs: %s to %r failed (%s); retrying in %.1f s (attempt %d)", event.event_type.value,
                            self.channel_name, outcome.error, delay, attempts)

    def _finish(self, store: Store, item: Claimed, status: DeliveryStatus, reason: str | None,
                outcome: ChannelOutcome | None = None) -> None:
        self._queue(store, item, status, reason, None, outcome or _final_outcome(self.channel_name, status, reason),
                    final=True)

    def _queue(self, store: Store, item: Claimed, status: DeliveryStatus, error: str | None,
               next_attempt: float | None,
               outcome: ChannelOutcome, *, final: bool) -> None:
        if not self._done:
            self._done_since = min(self._send_began, self.clock.monotonic())
        self._done.append((store, item.delivery_id, status, error, next_attempt, outcome, item.event.event_id, final))


class DeliveryEngine:
    """Background delivery for one manager over one store.

    :param retry: when to retry and when to give up.
    :param flush_timeout: seconds spent at interpreter exit delivering what is pending.
    :param clock: the time for due dates, backoff, leases, pacing and flush deadlines;
        default the store's.
    """

    def __init__(
        self,
        store: Store,
        plugins: PluginHost,
        *,
        retry: RetryPolicy | None = None,
        flush_timeout: float = 10.0,
        retention: tuple[float, int] = (30 * 86400.0, 10_000),
        clock: Clock | None = None,
        source: JournalSource | None = None,
    ) -> None:
        #: Another process's journal this engine takes in beside its own (a courier's).
        self.source = source
        self.store = store
        self.plugins = plugins
        self.retry = retry or RetryPolicy()
        self.flush_timeout = flush_timeout
        self.clock = clock or store.clock
        self.log = RepeatedLog(logger)
        #: Set whenever deliveries were recorded or events stored: a flush looks again.
        self.progress = threading.Event()
        self._memory: Store | None = None  # where events go while the store cannot be written
        self._stores: tuple[Store, ...] = (store,)
        self._unwritten_since: float | None = None
        self._unjournaled: collections.deque[dict[str, Any]] = collections.deque()
        self._waiting: list[dict[str, Any]] = []  # read, not yet taken by a busy store
        # log_metrics values for the ingest thread, bounded: a store that takes nothing
        # for long costs curve points (counted in the log), never memory.
        self._metrics: collections.deque[MetricEntry] = collections.deque(maxlen=METRICS_HELD)
        self._metrics_dropped = 0
        self._moved = 0  # events the last look moved into the store
        self._metrics_waiting: list[MetricRow] = []  # taken, not yet by a busy store
        self.journal: Journal | None = None
        if store.journal_directory is not None:
            try:
                self.journal = Journal(store.journal_directory)
            except OSError as exc:  # accepted events then go straight to the store, from memory
                self.store_trouble("journal", exc, "afs: the journal cannot be written (%s); notifications are held "
                                   "in memory until the store takes them", exc)
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

    # -- stores ------------------------------------------------------------------------

    def stores(self) -> tuple[Store, ...]:
        """Where deliveries are: the store, and the one in memory once it was needed."""
        return self._stores

    def _memory_store(self) -> Store:
        with self._lock:
            if self._memory is None:
                self._memory = Store(None, clock=self.clock)
                self._stores = (*self._stores, self._memory)
            return self._memory

    @property
    def not_durable(self) -> str | None:
        """Why accepted events are not (all) safe from a crash now, or None when they are."""
        if not self.store.durable:
            return self.store.location.reason or "the store is in memory"
        if self._unwritten_since is not None:
            since = dt.datetime.fromtimestamp(self._unwritten_since).strftime("%H:%M:%S")
            return f"the store could not be written since {since}; events are delivered from memory"
        return None

    #: Told :attr:`not_durable` whenever it changes (a courier tells its training process).
    on_durability: Callable[[str | None], None] | None = None

    def _durability_changed(self) -> None:
        if self.on_durability is not None:
            try:
                self.on_durability(self.not_durable)
            except Exception as exc:
                logger.debug("afs: a change of durability could not be told: %s", exc)

    def store_trouble(self, doing: str | tuple[str, str], exc: BaseException, message: str, *args: object) -> None:
        """Log a failure to read or write the journal or store, once with a count: a
        full or read-only disk, whatever it breaks, is one line."""
        self.log.log(logging.WARNING, "unwritable" if _cannot_write(exc) else (doing, type(exc)), message, *args)

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
            with contextlib.suppress(AttributeError):  # a channel that keeps its own memory
                channel.memory = StoredMemory(self.store, name, lambda exc: self.store_trouble(
                    ("memory", name), exc, "afs: %r could not keep what it sent in the store (%s); it keeps it in "
                    "this process", name, exc))
            worker.start()

    def detach(self, name: str) -> None:
        with self._lock:
            worker = self._workers.pop(name, None)
        if worker is not None:
            worker.stopping.set()
            worker.wake.set()

    # -- submitting --------------------------------------------------------------------

    def submit(self, event: NotificationEvent, channels: Sequence[str], *,
               merge: dict[str, Any] | None = None) -> Tracker:
        """Accept ``event`` for ``channels``: once this returns it survives a crash
        (unless the journal cannot be written: then it is delivered from memory).
        ``merge``: a rank's failure, joined or held like one in :meth:`accept`, but
        in the store's own time (see :meth:`Store.ingest`)."""
        self._ensure_running()
        tracker = Tracker(event.event_id, channels)
        if channels:
            self._trackers[event.event_id] = tracker
            record: dict[str, Any] = {"event": event.to_dict(), "channels": list(channels), "at": self.clock.time()}
            if not getattr(self.clock, "aligned", True):  # a shared store's clock, not yet measured
                record["unaligned"] = True
            if merge is not None:
                record.update(merge=merge, not_before=record["at"] + ranks.MERGE_HOLD)
            if self.journal is None:
                self._unjournaled.append(record)
            else:
                try:
                    self.journal.append(record)
                except OSError as exc:
                    self._unjournaled.append(record)
                    self.store_trouble("journal", exc, "afs: the journal cannot be written (%s); notifications are "
                                       "held in memory until the store takes them", exc)
            # The ingest thread is woken once per batch, not per call: until it has
            # looked (the event stays set) a burst only appends, and it takes it in one go.
            if not self._ingest_wake.is_set():
                self._ingest_wake.set()
        return tracker

    def accept(self, event: NotificationEvent, channels: Sequence[str]) -> NotifyResult:
        """Take ``event`` for ``channels``; the result fills in as deliveries end.

        A failure other ranks of the job may report too is stored at once, held for
        the merge, or joined to the one another rank stored (then this result says
        so and nothing more is sent for it). Where the store stays busy beyond this
        thread's half second, the ingest thread does that from the journal.
        """
        self._ensure_running()
        key = ranks.merge_key(event)
        if key is not None and not self._forked and self.store.quick_writes:
            now = self.clock.time()
            try:
                joined = self.store.enqueue_or_join(event, channels, dedup_key=key, since=now - ranks.MERGE_WINDOW,
                                                    not_before=now + ranks.MERGE_HOLD)
            except STORE_ERRORS as exc:
                # Busy (or unwritable): this thread waits no longer, the ingest thread
                # joins or stores it from the journal as soon as the store takes it.
                logger.info("afs: the store could not take this rank's failure at once (%s); it is merged with the "
                            "other ranks' once the store is free", exc)
                merge = {"key": key, "since": now - ranks.MERGE_WINDOW, "rank": event.source.rank}
                return NotifyResult(event, tracker=self.submit(event, channels, merge=merge))
            else:
                if joined is not None:
                    return NotifyResult(event, {n: _merged(n, joined) for n in channels})
                tracker = Tracker(event.event_id, channels)
                self._trackers[event.event_id] = tracker
                self._wake(channels)
                return NotifyResult(event, tracker=tracker)
        if key is not None and not self._forked:  # a store across the network: joined from the journal
            now = self.clock.time()
            merge = {"key": key, "since": now - ranks.MERGE_WINDOW, "rank": event.source.rank}
            return NotifyResult(event, tracker=self.submit(event, channels, merge=merge))
        return NotifyResult(event, tracker=self.submit(event, channels))

    def record_metrics(self, entry: MetricEntry) -> None:
        """Keep a step's metrics for the ingest thread (no write on the caller's thread)."""
        if self._pid != os.getpid():  # a data-loader worker's: its parent records the run's
            return
        if len(self._metrics) >= METRICS_HELD:
            self._metrics_dropped += 1
        self._metrics.append(entry)

    def _take_metrics(self) -> list[MetricRow]:
        entries = [self._metrics.popleft() for _ in range(len(self._metrics))]
        lost, self._metrics_dropped = self._metrics_dropped, 0
        if lost > 0:
            self.log.log(logging.WARNING, "metrics", "afs: the metrics of %d steps were dropped while the store "
                         "took none (at most %d wait)", lost, METRICS_HELD)
        return rows_from_entries(entries)

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
        try:  # a damaged store is found and replaced before anything is claimed from it
            self.store.check()
        except Exception as exc:
            logger.warning("afs: the store could not be checked: %s", exc)
        last_scan = last_prune = float("-inf")
        while not self._stopping.is_set():
            now = time.monotonic()
            if now - last_prune >= PRUNE_SECONDS:
                last_prune = now
                try:  # bounded history: by age and by count, finished deliveries only
                    self.store.prune(max_age=self.retention[0], max_events=self.retention[1], every=PRUNE_SECONDS)
                except Exception as exc:
                    self.log.log(logging.WARNING, "prune", "afs: old history could not be pruned: %s", exc)
            try:
                scan = now - last_scan >= ORPHAN_SCAN_SECONDS
                self._moved = 0
                self.ingest(orphans=scan)
                if scan:
                    last_scan = now
                if self._moved:
                    self._stopping.wait(BATCH_SECONDS)
            except Exception as exc:
                self.log.log(logging.ERROR, ("ingest", type(exc)),
                             "afs: accepted events could not be moved into the store (%s); retrying", exc)
                self._stopping.wait(1.0)
            self._ingest_wake.wait(min(INGEST_SECONDS, ORPHAN_SCAN_SECONDS - (time.monotonic() - last_scan)))
            self._ingest_wake.clear()

    def take_in(self, record: dict[str, Any]) -> None:
        """A record another process could not journal (a courier's training process, on a
        full disk): held like one this process could not journal."""
        self._unjournaled.append(record)
        self._ingest_wake.set()

    def wake_workers(self) -> None:
        """Deliveries were stored by another process (a courier's training process): look now."""
        with self._lock:
            self._wake(list(self._workers))

    def wake_ingest(self) -> None:
        """New lines are in the journal this engine reads (a courier's wake-up)."""
        self._ingest_wake.set()

    def ingest(self, orphans: bool = False, *, wait: bool | float = True) -> bool:
        """Move accepted events into the store: this process's journal, what is held in
        memory, and (when asked) the journals stopped processes left. When the ingest
        thread is at it, this waits for it (``wait`` True), ``wait`` seconds, or not at
        all (False), and then returns False."""
        taken = (self._ingest_lock.acquire(blocking=wait) if isinstance(wait, bool)
                 else self._ingest_lock.acquire(timeout=max(wait, 0.0)))
        if not taken:
            return False
        try:
            self._ingest_held(orphans)
        finally:
            self._ingest_lock.release()
        return True

    def _ingest_for_flush(self, orphans: bool, wait: float) -> bool | None:
        """:meth:`ingest` for a flush: None when the ingest thread is at it (what it took
        is then in its hands, in neither a store nor _waiting); otherwise whether all that
        was accepted is in a store: the journal read to its end, none left waiting for a
        busy store. Judged under the lock: once it is let go the ingest thread may take
        those waiting in hand."""
        if not self._ingest_lock.acquire(timeout=max(wait, 0.0)):
            return None
        try:
            # An ingest that stores those waiting for a busy store does not read the journal
            # (see _ingest_held): once they are in, a second one reads what came after them.
            for _ in range(2):
                read = self._ingest_held(orphans)
                orphans = False
                if self._waiting or read:
                    break
            return read and not self._waiting
        finally:
            self._ingest_lock.release()

    def _ingest_held(self, orphans: bool) -> bool:
        """The body of :meth:`ingest`, the ingest lock held; whether it read the journal
        (or there is none)."""
        # While the store takes nothing (busy, or a database away), what was read waits
        # in memory and the rest stays where it is (the journal on disk, the bounded
        # metrics queue): memory does not grow with the length of the outage.
        rows, self._metrics_waiting = self._metrics_waiting or self._take_metrics(), []
        reading = self.journal is not None and not self._waiting
        records = self.journal.read_new() if reading and self.journal is not None else []
        if self.source is not None and not self._waiting:
            records, more_rows = split_rows(self.source.read_new() + records)
            rows += more_rows
        held = self._waiting + [self._unjournaled.popleft() for _ in range(len(self._unjournaled))]
        self._waiting = []
        self._moved += len(records) + len(held)
        if records or held or rows:  # in the order they were accepted
            self._store(sorted(records + held, key=lambda r: r.get("at") or 0.0) if held else records, rows)
        self._restore_from_memory()
        if orphans and self.journal is not None:
            count, touched = take_stopped_journals(self.store)
            if count:
                self._wake(touched)
                self.progress.set()
        return reading or self.journal is None

    def _store(self, records: list[dict[str, Any]], metric_rows: list[MetricRow]) -> None:
        joined: dict[str, str] = {}  # ranks' failures merged as they went in
        try:
            touched = self.store.ingest(records, marks=self._marks(), joined=joined, metric_rows=metric_rows)
        except STORE_ERRORS as exc:
            if _busy(exc):  # another process holds the store's lock: they wait in the journal, tried again
                self._waiting = records
                self._metrics_waiting = metric_rows  # and these beside them
                self.store_trouble("busy", exc, "afs: the store is busy (%s); accepted events wait in the journal "
                                   "and go in when it is free", exc)
                return
            touched = self._memory_store().ingest(records, joined=joined, metric_rows=metric_rows)
            if self._unwritten_since is None:
                self._unwritten_since = self.clock.time()
                self._durability_changed()
            self.store_trouble("ingest", exc, "afs: the store cannot be written (%s); notifications are delivered "
                               "from memory until it can, and only their journal lines outlive a crash", exc)
        else:
            if self._unwritten_since is not None and self.store.durable:
                self._unwritten_since = None
                logger.warning("afs: the store can be written again; new events are safe from a crash once more")
                self._durability_changed()
            self._acknowledge()
        for event_id, into in joined.items():
            tracker = self._trackers.get(event_id)
            if tracker is not None:
                for name in tracker.channels:
                    tracker.update(_merged(name, into), final=True)
        self._wake(touched)
        self.progress.set()

    def _restore_from_memory(self) -> None:
        """Once the store can be written again, what waits in memory moves back into it,
        so it survives the process too."""
        memory = self._memory
        if memory is None or self._unwritten_since is not None or not self.store.durable:
            return
        records = memory.hand_over()
        if not records:
            return
        try:
            touched = self.store.ingest(records, marks=self._marks())
        except STORE_ERRORS:
            memory.ingest(records)  # still not writable: they stay where they were
            return
        logger.info("afs: %d notifications held in memory are in the store again", len(records))
        self._acknowledge()
        self._wake(touched)

    def _journal_all_stored(self) -> bool:
        """Whether all the journal lines read so far are in the store for good: none
        waits for a busy store, none lives only in memory."""
        memory = self._memory
        return not self._waiting and (memory is None or not any(c.pending for c in memory.counts().values()))

    def _marks(self) -> dict[str, int] | None:
        """How far the store holds this process's journal, written with what it takes in."""
        if not self._journal_all_stored():
            return None
        marks = {} if self.journal is None else self.journal.marks()
        if self.source is not None:
            marks.update(self.source.marks())
        return marks

    def _acknowledge(self) -> None:
        """The journal may let go of files once all it held is in the store for good."""
        if self._journal_all_stored():
            done = [] if self.journal is None else self.journal.acknowledge()
            for name in done + ([] if self.source is None else self.source.acknowledge()):
                with contextlib.suppress(*STORE_ERRORS):  # a mark left for a file that is gone does no harm
                    self.store.forget_journal(name)

    # -- flushing and closing ------------------------------------------------------------

    def pending(self, due_by: float | None = None) -> PendingSummary:
        """Pending deliveries of this engine's channels in every store it uses."""
        with self._lock:
            names = list(self._workers)
        total = due = 0
        next_after: float | None = None
        for store in self.stores():
            summary = store.pending(names, due_by)
            total, due = total + summary.total, due + summary.due
            if summary.next_after is not None and (next_after is None or summary.next_after < next_after):
                next_after = summary.next_after
        return PendingSummary(total, due, next_after)

    def flush(self, timeout: float | None = None) -> bool:
        """Deliver everything pending for this process's channels that falls due within
        ``timeout`` seconds: backoff retries, Retry-After waits, pacing and rank holds
        included, and what stopped processes left. True when nothing is left pending;
        False otherwise, with a log line saying how many are left and when they are due.
        """
        self._ensure_running()
        if self._forked:
            return False  # left to the parent, once this process has exited
        clock = self.clock
        deadline = None if timeout is None else clock.monotonic() + timeout
        took_orphans = False
        while True:
            self.progress.clear()
            remaining = None if deadline is None else deadline - clock.monotonic()
            # On the caller's thread: never wait on a busy store beyond the deadline, nor
            # on the ingest thread (it may be waiting on that store itself).
            patience = 1.0 if remaining is None else min(max(remaining, 0.0), 1.0)
            try:
                with self.store.patience(patience):
                    # Nothing can be concluded in a round where the ingest thread holds
                    # what it took (see _ingest_for_flush). Its turns are short (but for a
                    # busy store): a moment's wait finds a gap.
                    stored = self._ingest_for_flush(not took_orphans, wait=min(patience, FLUSH_POLL_SECONDS))
                    took_orphans = stored is not None or took_orphans
                    # Taken after the ingest: a shared store's clock is set from its server
                    # once connected, and the first ingest may be what connects.
                    due_by = None if remaining is None else clock.time() + max(remaining, 0.0)
                    left = self.pending(due_by)
            except STORE_ERRORS as exc:
                if not _busy(exc):  # waiting would not make it readable
                    logger.warning("afs: flush could not read the store: %s", exc)
                    return False
                if remaining is not None and remaining <= 0:
                    logger.warning("afs: flush could not read the store in time: %s", exc)
                    return False
                clock.wait(self.progress, FLUSH_POLL_SECONDS)
                continue
            if left.total == 0 and stored and took_orphans:
                return True
            if left.total and (left.due == 0 or (remaining is not None and remaining <= 0)):
                self._say_left(left, timed_out=left.due > 0)
                return False
            if remaining is not None and remaining <= 0:
                return False  # what was accepted is not even in the store yet
            with self._lock:
                self._wake(list(self._workers))
            clock.wait(self.progress, FLUSH_POLL_SECONDS if remaining is None else min(remaining, FLUSH_POLL_SECONDS))
            # Progress comes with every batch a worker records; counting what is left
            # after each would cost the workers' store and CPU more than the flush needs.
            clock.wait(self._stopping, FLUSH_LOOK_SECONDS if remaining is None
                       else min(max(remaining, 0.0), FLUSH_LOOK_SECONDS))

    def _say_left(self, left: PendingSummary, *, timed_out: bool) -> None:
        if timed_out:
            self.log.log(logging.WARNING, "flush-timed-out", "afs: %d deliveries are still pending after the flush's "
                         "time ran out; they stay in the outbox for the next run on this store", left.total)
            return
        due = dt.datetime.fromtimestamp(left.next_after or self.clock.time())
        wait = format_duration(max((left.next_after or 0.0) - self.clock.time(), 0.0))
        logger.warning("afs: %d deliveries stay pending: the next falls due at %s (in %s), after the flush's deadline; "
                       "the next run on this store delivers them", left.total, due.strftime("%Y-%m-%d %H:%M:%S"), wait)

    def close(self, timeout: float | None = None) -> bool:
        """Flush up to ``timeout`` seconds, then stop; what is left stays pending for next time."""
        if self._closed:
            return True
        self._ensure_running()
        if self._forked:
            self._closed = True
            if self.journal is not None:
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
        try:
            left = max(deadline - time.monotonic(), 0.5)
            with self.store.patience(left):
                self.ingest(wait=left)  # anything appended while stopping (the journal keeps it otherwise)
        except Exception as exc:
            logger.warning("afs: events accepted while stopping could not be stored: %s", exc)
        self._say_lost()
        self.log.summarize()
        if self.journal is not None:
            removed = self.journal.close()
            if removed is not None:
                with contextlib.suppress(*STORE_ERRORS):
                    self.store.forget_journal(removed)
        return flushed

    def _say_lost(self) -> None:
        """Undelivered events that lived only in memory end with this process: say so."""
        lost = 0
        for store in self.stores():
            if not store.durable:
                lost += sum(c.pending for c in store.counts().values())
        if lost:
            logger.error("afs: %d notifications accepted while the store could not be written were not delivered "
                         "before the process ended; the next run on this store delivers those whose journal lines "
                         "were written, the others are lost", lost)

    def _send_digests(self) -> int:
        """Repeats held back with no later event to tell of them: one summary each."""
        with self._lock:
            workers = list(self._workers.values())
        sent = 0
        for worker in workers:
            for event_type, run_id, count in worker.throttle.pending_digests(self.store, worker.channel_name):
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


_FULL_OR_READ_ONLY = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6


def _busy(exc: BaseException) -> bool:
    """Whether ``exc`` says another connection holds the store's lock (it will pass)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)
_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_FULL = 8, 10, 13


def _cannot_write(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk takes nothing more (full, over quota, read-only)."""
    if isinstance(exc, OSError):
        return exc.errno in _FULL_OR_READ_ONLY
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_FULL)
    text = str(exc)
    return "disk is full" in text or "disk I/O error" in text or "readonly database" in text


def take_stopped_journals(store: Store) -> tuple[int, set[str]]:
    """Move into ``store`` what processes that stopped (exited, crashed, were killed)
    left in their journals beside it, from where the store's mark says it left off,
    and remove those journals.

    Returns how many events were taken and the channels they are for. A journal the
    store cannot take now (a full disk) stays for the next try.
    """
    if store.journal_directory is None or store.read_only:
        return 0, set()
    taken, touched = 0, set()
    journals = take_orphans(store.journal_directory, start=store.journal_mark)
    try:
        for path, lines in journals:
            records, rows = split_rows(lines)
            if records or rows:
                touched |= store.ingest(records, marks={path.name: path.stat().st_size}, metric_rows=rows)
            path.unlink(missing_ok=True)
            with contextlib.suppress(*STORE_ERRORS):
                store.forget_journal(path.name)
            if records:
                taken += len(records)
                logger.info("afs: picked up %d events a stopped process left in %s", len(records), path.name)
    except STORE_ERRORS:
        pass  # the store cannot take them now: the journal stays for the next try
    finally:
        journals.close()
    return taken, touched


_ENGINES: weakref.WeakSet[DeliveryEngine] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Locks held by threads that do not exist in the child would stay held for ever.
    for engine in list(_ENGINES):
        engine._lock = threading.Lock()
        engine._ingest_lock = threading.Lock()
        engine.log._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_at_exit(ref: weakref.ref[DeliveryEngine]) -> None:
    engine = ref()
    if engine is not None and not engine._closed:
        try:
            engine.close()  # says itself what stays pending, and until when
        except Exception:
            logger.exception("afs: could not flush notifications at exit")
