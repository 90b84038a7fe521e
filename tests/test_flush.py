"""Flush keeps the engine's promise: what can fall due before its deadline goes out.

Time here is a ManualClock: backoff, Retry-After waits, the rank merge hold and
leases are moved through by advancing it, never by sleeping.
"""

import logging
import sqlite3
import threading
import time

import pytest

from afs_core import (
    Channel,
    EventType,
    NotificationEvent,
    NotificationManager,
    Source,
    TransientDeliveryError,
)
from afs_core.delivery.retry import RetryPolicy
from afs_core.delivery.store import Store
from afs_core.results import DeliveryStatus
from afs_core.source import forget_current_source
from afs_core.testing import RecordingChannel


class Scripted(Channel):
    """Raises the scripted errors in turn, then delivers; notes the clock at each try."""

    def __init__(self, clock, *errors):
        self.clock = clock
        self.errors = list(errors)
        self.attempts = []
        self.delivered = []

    def deliver(self, message):
        self.attempts.append(self.clock.time())
        if self.errors:
            raise self.errors.pop(0)
        self.delivered.append(message)


def wait_until(condition, seconds=10.0):
    """Real time, bounded: for the engine's threads to act on what the clock allows."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.fixture
def store(tmp_path, manual_clock):
    return Store(tmp_path / "afs.db", clock=manual_clock)


@pytest.fixture
def manager(afs_plugins, store):
    manager = NotificationManager(plugins=afs_plugins, store=store,
                                  retry=RetryPolicy(max_attempts=5, base=10.0, cap=10.0))
    yield manager
    manager.close(timeout=0)


def flush_in_thread(manager, timeout):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("flushed", manager.flush(timeout)), daemon=True)
    thread.start()
    return thread, result


def test_a_backoff_retry_waits_for_its_time_and_flush_waits_for_it(manager, manual_clock):
    channel = Scripted(manual_clock, TransientDeliveryError("HTTP 503"))
    manager.register_handler("flaky", channel)
    started = manual_clock.time()
    manager.notify("t", "m")
    assert wait_until(lambda: len(channel.attempts) == 1)
    (row,) = manager.store.outbox()
    assert started <= row.next_attempt <= started + 10.0  # full jitter within the 10 s cap
    thread, result = flush_in_thread(manager, timeout=60)
    assert wait_until(lambda: manager.store.outbox()[0].attempts == 1)
    assert len(channel.attempts) == 1  # not before its time: the clock has not moved
    manual_clock.advance(10.0)
    thread.join(timeout=10)
    assert result == {"flushed": True}
    assert len(channel.attempts) == 2 and channel.attempts[1] >= row.next_attempt
    assert len(channel.delivered) == 1 and manager.store.outbox() == []


def test_a_retry_after_beyond_the_deadline_stays_pending_and_flush_says_when(manager, manual_clock, caplog):
    channel = Scripted(manual_clock, TransientDeliveryError("HTTP 429", retry_after=3600))
    manager.register_handler("limited", channel)
    manager.notify("t", "m")
    assert wait_until(lambda: manager.store.outbox() and manager.store.outbox()[0].attempts == 1)
    with caplog.at_level(logging.WARNING, logger="afs"):
        assert manager.flush(timeout=60) is False
    assert "1 deliveries stay pending: the next falls due at" in caplog.text and "(in 1h 00m)" in caplog.text
    assert len(channel.attempts) == 1
    manual_clock.advance(3600)
    assert manager.flush(timeout=60) is True
    assert channel.attempts[1] - channel.attempts[0] >= 3600 and len(channel.delivered) == 1


def test_a_retry_after_within_the_deadline_is_waited_for(manager, manual_clock):
    channel = Scripted(manual_clock, TransientDeliveryError("HTTP 429", retry_after=30))
    manager.register_handler("limited", channel)
    manager.notify("t", "m")
    assert wait_until(lambda: len(channel.attempts) == 1)
    thread, result = flush_in_thread(manager, timeout=60)
    manual_clock.advance(29)
    assert wait_until(lambda: not thread.is_alive(), seconds=0.3) is False  # still waiting at 29 s
    manual_clock.advance(1)
    thread.join(timeout=10)
    assert result == {"flushed": True} and len(channel.delivered) == 1


def test_a_flush_that_runs_out_of_time_says_so_and_keeps_the_delivery(manager, manual_clock, caplog):
    release = threading.Event()

    class Stuck(Channel):
        def deliver(self, message):
            if not release.wait(10):
                raise TransientDeliveryError("never answered")

    manager.register_handler("stuck", Stuck())
    manager.notify("t", "m")
    thread, result = flush_in_thread(manager, timeout=5)
    with caplog.at_level(logging.WARNING, logger="afs"):
        manual_clock.advance(5)
        thread.join(timeout=10)
    assert result == {"flushed": False}
    assert "1 deliveries are still pending after the flush's time ran out" in caplog.text
    release.set()
    assert manager.flush(timeout=10) is True and manager.store.outbox() == []


def test_a_failure_held_for_the_rank_merge_is_sent_when_the_hold_ends(manager, manual_clock, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    forget_current_source()
    channel = Scripted(manual_clock)
    manager.register_handler("r", channel)
    manager.notify_error("NCCL timeout", model_name="m", run_id="run-1")
    thread, result = flush_in_thread(manager, timeout=None)
    assert wait_until(lambda: not thread.is_alive(), seconds=0.3) is False and channel.attempts == []
    manual_clock.advance(2.0)  # the two-second merge window
    thread.join(timeout=10)
    assert result == {"flushed": True} and len(channel.delivered) == 1


def test_reports_from_other_ranks_during_the_hold_join_the_first(manager, manual_clock):
    channel = RecordingChannel()
    manager.register_handler("r", channel)
    for rank in (1, 3):
        event = NotificationEvent(EventType.TRAINING_FAILED, "Training failed: m", "NCCL timeout", run_id="run-2",
                                  error_details="NCCL timeout", source=Source(host="h", pid=rank, rank=rank,
                                                                              world_size=4))
        manager.send_event(event)
        manual_clock.advance(1.0)
    thread, result = flush_in_thread(manager, timeout=None)
    manual_clock.advance(1.0)
    thread.join(timeout=10)
    assert result == {"flushed": True}
    assert len(channel.messages) == 1 and "Ranks: 1, 3" in channel.messages[0]


def test_a_lease_held_by_another_host_is_taken_over_only_once_it_expires(store, manual_clock):
    store.enqueue(NotificationEvent(EventType.TRAINING_STARTED, "t", "m"), ["slack"])
    (held,) = store.claim("slack", "other-host:4242:1", lease=120)
    assert store.claim("slack", "this-host:1:1") == []
    manual_clock.advance(119)
    assert store.claim("slack", "this-host:1:1") == []
    manual_clock.advance(2)
    (taken,) = store.claim("slack", "this-host:1:1")
    assert taken.delivery_id == held.delivery_id
    assert store.finish_many([(held.delivery_id, DeliveryStatus.DELIVERED, None, None)], "other-host:4242:1") == [False]


def test_flush_reads_what_a_stopped_process_left_in_its_journal(manager, tmp_path, manual_clock):
    import json

    journal = tmp_path / "journal"
    journal.mkdir(exist_ok=True)
    event = NotificationEvent(EventType.TRAINING_COMPLETED, "left behind", "m")
    line = json.dumps({"event": event.to_dict(), "channels": ["r"], "at": manual_clock.time()})
    (journal / f"{Source.current().host}-999999-1.jsonl").write_text(line + "\n")  # no such pid: stopped
    channel = RecordingChannel()
    manager.register_handler("r", channel)
    assert manager.flush(timeout=10) is True
    assert [m.splitlines()[0] for m in channel.messages] == ["✅ left behind"]
    assert not list(journal.glob("*-999999-*"))


def test_leases_on_everything_claimed_are_renewed_before_any_runs_out(afs_plugins, store, manual_clock, monkeypatch):
    import afs_core.delivery.engine as engine_module

    monkeypatch.setattr(engine_module, "LEASE_SECONDS", 0.6)
    expired_while_held = []

    class Quick(Channel):
        def deliver(self, message):
            manual_clock.advance(0.15)  # each send takes a quarter of the lease
            with store._read() as db:
                expired_while_held.extend(db.execute(
                    "SELECT id FROM deliveries WHERE status = 'pending' AND lease_owner IS NOT NULL"
                    " AND lease_until <= ?", (manual_clock.time(),)).fetchall())

    for i in range(8):
        store.enqueue(NotificationEvent(EventType.TRAINING_STARTED, f"event {i}", "m"), ["quick"])
    manager = NotificationManager(plugins=afs_plugins, store=store)
    manager.register_handler("quick", Quick())
    try:
        assert manager.flush(timeout=30) is True
    finally:
        manager.close(timeout=1)
    assert expired_while_held == []  # no other process could have taken one mid-batch


def test_a_lease_outlasts_the_slowest_sends_of_a_batch(afs_plugins, store, manual_clock):
    started = threading.Event()
    release = threading.Event()

    class Slow(Channel):
        timeout = 60.0  # each send may take a minute
        batch_size = 20

        def deliver(self, message):
            started.set()
            release.wait(10)

    store.enqueue(NotificationEvent(EventType.TRAINING_STARTED, "t", "m"), ["slow"])
    manager = NotificationManager(plugins=afs_plugins, store=store)
    manager.register_handler("slow", Slow())
    try:
        assert started.wait(10)
        with store._read() as db:
            (lease_until,) = db.execute("SELECT lease_until FROM deliveries").fetchone()
        assert lease_until >= manual_clock.time() + 3 * 60 * 20  # no other process takes it mid-send
    finally:
        release.set()
        manager.close(timeout=5)


def test_flush_without_a_timeout_ends_when_the_store_cannot_be_read(manager, monkeypatch, caplog):
    """Waiting helps a busy store, not a broken one: flush() says so and returns."""
    import sqlite3

    manager.register_handler("c", RecordingChannel())

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(manager.store, "pending", broken)
    thread, result = flush_in_thread(manager, timeout=None)
    thread.join(timeout=10)
    assert result == {"flushed": False} and "disk I/O error" in caplog.text


class BusyUntilLetGo(Store):
    """Busy for every writer of events until ``let_go``."""

    def __init__(self, path):
        super().__init__(path)
        self.let_go = threading.Event()

    def ingest(self, records, *args, **kwargs):
        if records and not self.let_go.is_set():
            raise sqlite3.OperationalError("database is locked")
        return super().ingest(records, *args, **kwargs)


class HeldByTheIngestThread(BusyUntilLetGo):
    """... but for the ingest thread's second go at storing events: it then holds them
    (``in_hand``) until ``let_go``, and stores them."""

    def __init__(self, path):
        super().__init__(path)
        self.in_hand = threading.Event()
        self.goes = 0

    def ingest(self, records, *args, **kwargs):
        if records and threading.current_thread().name == "afs-ingest":
            self.goes += 1
            if self.goes > 1:
                self.in_hand.set()
                assert self.let_go.wait(10)
        return super().ingest(records, *args, **kwargs)


def count_pending_after(engine, condition):
    """The engine's counts of what is pending wait (5 s at most) for ``condition`` first:
    another thread's move put between a flush's ingest and its count."""
    count = engine.pending

    def after(due_by=None):
        wait_until(condition, seconds=5)
        return count(due_by)

    engine.pending = after


@pytest.mark.parametrize("between", [False, True], ids=["in-its-hands", "taken-between-ingest-and-count"])
def test_a_flush_says_nothing_is_left_only_when_no_event_is_in_the_ingest_threads_hands(afs_plugins, tmp_path,
                                                                                        between):
    """The store is busy for the flush; the ingest thread takes the event that waited for
    it and is still storing it: the flush cannot see it in the store nor among those
    waiting, and must not call that done. ``between``: the ingest thread takes it the
    moment the flush's own ingest lets go, before the flush counts what is pending; the
    flush judges by what its own ingest left."""
    store, channel = HeldByTheIngestThread(tmp_path / "afs.db"), RecordingChannel()
    manager = NotificationManager(plugins=afs_plugins, store=store)
    try:
        manager.register_handler("r", channel)
        if between:
            count_pending_after(manager._get_engine(), store.in_hand.is_set)
        manager.notify("t", "m")
        assert manager.flush(timeout=1.5) is False  # busy, then in the ingest thread's hands
        assert store.in_hand.is_set() and channel.messages == []
        store.let_go.set()
        assert manager.flush(timeout=10) is True and len(channel.messages) == 1
    finally:
        store.let_go.set()
        manager.close(timeout=5)


def test_a_flush_reads_the_journal_past_those_that_waited_for_a_busy_store(afs_plugins, tmp_path):
    """An ingest that stores events left waiting for a busy store does not read the
    journal meanwhile: an event accepted after them is still there, unread. Once the
    waiting one is stored and sent, nothing is pending; the flush must still find the
    later one before it says True."""
    store, channel = BusyUntilLetGo(tmp_path / "afs.db"), RecordingChannel()
    manager = NotificationManager(plugins=afs_plugins, store=store)
    try:
        manager.register_handler("r", channel)
        engine = manager._get_engine()
        manager.notify("first", "m")
        assert wait_until(lambda: engine._waiting, seconds=5)  # met the busy store: waiting
        engine._stopping.set()  # the ingest thread stops: only the flush ingests from here
        engine._ingest_wake.set()
        engine._ingester.join(timeout=5)
        manager.notify("second", "m")  # in the journal, behind the waiting one
        count_pending_after(engine, lambda: len(channel.messages) >= 1)  # the first sent before the count
        store.let_go.set()
        assert manager.flush(timeout=5) is True
        assert len(channel.messages) == 2  # the second too, not only the one that waited
    finally:
        store.let_go.set()
        manager.close(timeout=5)
