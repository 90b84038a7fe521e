"""The delivery engine: non-blocking, durable, retried, isolated, quiet, rank-aware."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from afs_core import (
    Channel,
    EventType,
    NotificationEvent,
    NotificationManager,
    PermanentDeliveryError,
    Source,
    TransientDeliveryError,
    hookimpl,
)
from afs_core.delivery.policy import ChannelPolicy
from afs_core.delivery.retry import RetryPolicy
from afs_core.delivery.store import Store
from afs_core.results import DeliveryStatus
from afs_core.source import forget_current_source
from afs_core.testing import RecordingChannel


class Gate(Channel):
    """Delivers only once the test opens the gate."""

    def __init__(self):
        self.open = threading.Event()
        self.messages = []

    def deliver(self, message):
        if not self.open.wait(10):
            raise TransientDeliveryError("gate stayed shut")
        self.messages.append(message)


class Scripted(Channel):
    """Fails as scripted, then delivers; remembers when each attempt came."""

    def __init__(self, *errors):
        self.errors = list(errors)
        self.attempts = []

    def deliver(self, message):
        self.attempts.append(time.monotonic())
        if self.errors:
            raise self.errors.pop(0)


@pytest.fixture
def manager(afs_plugins, tmp_path):
    manager = NotificationManager(plugins=afs_plugins, store=Store(tmp_path / "afs.db"),
                                  retry=RetryPolicy(max_attempts=3, base=0.05, cap=0.1))
    yield manager
    manager.close(timeout=5)


@pytest.fixture
def failures(manager):
    """Every afs_delivery_failed call, as the error text."""
    seen = []

    class Observer:
        @hookimpl
        def afs_delivery_failed(self, event, channel, error):
            seen.append(str(error))

    manager.plugins.register(Observer(), name="observer")
    return seen


def test_notify_returns_before_delivery_and_the_result_fills_in(manager):
    gate = Gate()
    manager.register_handler("gate", gate)
    started = time.perf_counter()
    result = manager.notify("t", "m")
    assert time.perf_counter() - started < 0.05
    assert result.pending == ["gate"] and bool(result) and not result.delivered
    gate.open.set()
    assert result.wait(5)
    assert result.delivered == ["gate"] and result.ok and len(gate.messages) == 1


def test_a_dead_channel_does_not_delay_a_live_one(manager):
    gate, live = Gate(), RecordingChannel()
    manager.register_handler("dead", gate)
    manager.register_handler("live", live)
    results = [manager.notify(f"event {i}", "m") for i in range(5)]
    deadline = time.monotonic() + 5
    while len(live.messages) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(live.messages) == 5 and not gate.messages
    assert all(r.outcomes["dead"].status.value == "pending" for r in results)
    gate.open.set()


def test_transient_failures_are_retried_with_the_services_wait(manager):
    channel = Scripted(TransientDeliveryError("HTTP 429", retry_after=0.4), TransientDeliveryError("HTTP 503"))
    manager.register_handler("flaky", channel)
    result = manager.notify("t", "m")
    assert result.wait(10) and result.delivered == ["flaky"]
    first, second, third = channel.attempts
    assert second - first >= 0.4  # Retry-After honoured
    assert third - second <= 0.5  # then backoff with jitter, capped at 0.1 s here


def test_permanent_failures_are_not_retried_and_reported_once(manager, failures):
    channel = Scripted(PermanentDeliveryError("invalid_token"))
    manager.register_handler("broken", channel)
    result = manager.notify("t", "m")
    assert result.wait(5)
    assert len(channel.attempts) == 1 and failures == ["invalid_token"]
    assert result.failed == {"broken": "invalid_token"}
    assert manager.store.counts()["broken"].dead == 1


def test_retries_end_in_a_dead_letter_with_the_reason(manager, failures):
    channel = Scripted(*[TransientDeliveryError("HTTP 500")] * 10)
    manager.register_handler("down", channel)
    result = manager.notify("t", "m")
    assert result.wait(10)
    assert len(channel.attempts) == 3
    assert result.failed == {"down": "gave up after 3 attempts: HTTP 500"} and len(failures) == 1
    (entry,) = manager.store.history(limit=1)
    assert entry.deliveries[0].status is DeliveryStatus.FAILED and entry.deliveries[0].attempts == 3


def test_flush_waits_for_due_deliveries_and_close_stops(manager):
    gate = Gate()
    manager.register_handler("gate", gate)
    manager.notify("t", "m")
    assert manager.flush(timeout=0.2) is False
    gate.open.set()
    assert manager.flush(timeout=5) is True and len(gate.messages) == 1
    assert manager.close(timeout=1) is True


def test_context_manager_flushes_on_exit(afs_plugins, tmp_path):
    channel = RecordingChannel()
    with NotificationManager(plugins=afs_plugins, store=Store(tmp_path / "afs.db")) as manager:
        manager.register_handler("r", channel)
        manager.notify("t", "m")
    assert len(channel.messages) == 1


def test_throttling_sends_one_and_says_how_many_were_held(manager):
    channel = RecordingChannel()
    manager.register_handler("quiet", channel, policy=ChannelPolicy(throttle_window=0.5))
    for step in range(5):
        manager.notify_loss_improved("m", "r", loss=1.0 / (step + 1))
    manager.notify_training_failed("m", "r", "boom")  # errors are never throttled
    manager.flush(timeout=5)
    assert len(channel.messages) == 2
    time.sleep(0.6)
    manager.notify_loss_improved("m", "r", loss=0.01)
    manager.flush(timeout=5)
    assert "and 4 more 'loss improved' in the last 0.5s" in channel.messages[-1]


def test_channel_settings_hold_back_levels_and_types(manager, monkeypatch):
    monkeypatch.setenv("AFS_PICKY_MIN_LEVEL", "warning")
    monkeypatch.setenv("AFS_PICKY_EXCLUDE_EVENTS", "COST_THRESHOLD_EXCEEDED")
    channel = RecordingChannel()
    manager.register_handler("picky", channel)
    info = manager.notify_training_started("m", "r")
    cost = manager.notify_cost_alert(12.5, 10.0)
    failed = manager.notify_training_failed("m", "r", "boom")
    for result in (info, cost, failed):
        assert result.wait(5)
    assert info.filtered == ["picky"] and cost.filtered == ["picky"] and failed.delivered == ["picky"]


def test_other_ranks_send_errors_only(manager, monkeypatch):
    channel = RecordingChannel()
    manager.register_handler("r", channel)
    monkeypatch.setenv("RANK", "3")
    forget_current_source()
    held = manager.notify_training_started("m", "r")
    assert held.filtered == ["r"] and "rank 3" in held.outcomes["r"].error
    sent = manager.notify_out_of_memory("m", "r", "CUDA out of memory")
    assert sent.wait(5) and sent.delivered == ["r"]


def test_the_same_failure_from_several_ranks_is_sent_once_naming_them(manager):
    channel = RecordingChannel()
    manager.register_handler("r", channel)
    results = []
    for rank in (2, 0, 5):
        event = NotificationEvent(EventType.TRAINING_FAILED, "Training failed: m", "NCCL timeout", run_id="run-9",
                                  error_details="NCCL timeout", source=Source(host="h", pid=1, rank=rank, world_size=8))
        results.append(manager.send_event(event))
    assert results[0].wait(10)
    assert len(channel.messages) == 1 and "Ranks: 2, 0, 5" in channel.messages[0]
    assert results[1].filtered == ["r"] and results[2].filtered == ["r"]


def test_a_rank_that_finds_the_store_busy_is_still_merged_once_it_is_free(manager, tmp_path, caplog):
    """The caller's thread waits only half a second for the store: a rank that finds it
    busy longer (64 ranks on a loaded machine) is not sent alone but merged by the
    engine's thread once the store is free."""
    channel = RecordingChannel()
    manager.register_handler("r", channel)

    def failure(rank):
        return NotificationEvent(EventType.TRAINING_FAILED, "Training failed: m", "NCCL timeout", run_id="run-9",
                                 error_details="NCCL timeout", source=Source(host="h", pid=1, rank=rank, world_size=8))

    first = manager.send_event(failure(0))  # stored, held for the other ranks
    other = sqlite3.connect(tmp_path / "afs.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the store's write lock
    try:
        started = time.monotonic()
        with caplog.at_level("INFO", logger="afs.engine"):
            busy = manager.send_event(failure(1))
        assert time.monotonic() - started < 10.0  # not kept waiting for the lock (30 s on the engine's threads)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert first.wait(10) and busy.wait(10)
    assert len(channel.messages) == 1 and "rank 0" in channel.messages[0]
    assert busy.filtered == ["r"] and busy.outcomes["r"].error == (
        f"sent once with the same failure from other ranks (event {first.event.event_id})")
    assert "merged with the other ranks' once the store is free" in caplog.text


def test_a_batch_from_the_journal_goes_in_whole_but_for_its_damaged_lines(tmp_path):
    """Journal records go into the store a statement per table for the whole batch; a
    record SQLite refuses, or whose fields cannot be read, is left out alone, and an
    end-of-run event among them still has the metrics recorded before it on its curve."""
    from afs_core.delivery import store as store_module

    store = Store(tmp_path / "afs.db")
    now = time.time()

    def record(i, **changes):
        event = NotificationEvent(EventType.EPOCH_COMPLETED, f"epoch {i}", "m", run_id="run-1", epoch=i,
                                  metrics={"loss": 1.0 / (i + 1)})
        data = {**event.to_dict(), "context": {"step": i}, **changes}
        return {"event": data, "channels": ["a", "b"], "at": now - 1000 + i}  # all due

    records = [record(i) for i in range(300)]  # past the parameter limit of one statement
    records[7]["event"]["title"] = ["not", "text"]  # SQLite takes no list: refused alone
    del records[11]["event"]["event_id"]  # unreadable: left out before any write
    done = NotificationEvent(EventType.TRAINING_COMPLETED, "done", "m", run_id="run-1")
    records.insert(200, {"event": done.to_dict(), "channels": ["a"], "at": now - 1000 + 199.5})
    assert len(records) * 9 > store_module.MAX_PARAMETERS

    assert store.ingest(records) == {"a", "b"}
    claimed = store.claim("b", "me", limit=1000)
    assert [c.event.title for c in claimed] == [f"epoch {i}" for i in range(300) if i not in (7, 11)]
    [finished] = [c for c in store.claim("a", "me", limit=1000) if c.event.title == "done"]
    curve = finished.event.context["loss_curve"]
    assert [step for step, _ in curve] == list(range(200))  # every value recorded before it, none after


@pytest.mark.parametrize("returning", [True, False], ids=["sqlite-3.35+", "older-sqlite"])
def test_outcomes_written_together_still_count_only_the_leases_held(tmp_path, monkeypatch, returning):
    """A claim leases its deliveries with one statement, and outcomes alike are written
    with one: a delivery whose lease another worker took meanwhile is left as it is."""
    import sqlite3

    from afs_core.delivery import store as store_module

    monkeypatch.setattr(store_module, "_RETURNING", returning and store_module._RETURNING)
    store = Store(tmp_path / "afs.db")
    for i in range(5):
        store.enqueue(NotificationEvent(EventType.TRAINING_STARTED, f"event {i}", "m"), ["c"])
    claimed = store.claim("c", "me", limit=4)
    assert [item.event.title for item in claimed] == [f"event {i}" for i in range(4)]
    ids = [item.delivery_id for item in claimed]
    with sqlite3.connect(store.path) as db:
        leased = dict(db.execute("SELECT id, lease_owner FROM deliveries"))
        db.execute("UPDATE deliveries SET lease_owner = 'another' WHERE id = ?", (ids[1],))
    assert [leased[i] for i in ids] == ["me"] * 4 and list(leased.values()).count(None) == 1
    held = store.finish_many([(ids[0], DeliveryStatus.DELIVERED, None, None),
                              (ids[1], DeliveryStatus.DELIVERED, None, None),
                              (ids[2], DeliveryStatus.DELIVERED, None, None),
                              (ids[3], DeliveryStatus.PENDING, "HTTP 503", time.time() + 60)], "me")
    assert held == [True, False, True, True]
    with sqlite3.connect(store.path) as db:
        statuses = dict(db.execute("SELECT id, status FROM deliveries"))
        attempts = sorted(db.execute("SELECT delivery_id, outcome, error FROM attempts"))
    assert [statuses[i] for i in ids] == ["delivered", "pending", "delivered", "pending"]
    assert attempts == sorted([(ids[0], "delivered", None), (ids[2], "delivered", None), (ids[3], "retry", "HTTP 503")])


def test_a_ranks_failure_from_the_journal_is_joined_or_stored_as_it_goes_into_the_store(tmp_path):
    store = Store(tmp_path / "afs.db")
    now = time.time()

    def record(rank, since=now - 30):
        event = NotificationEvent(EventType.TRAINING_FAILED, "failed", "NCCL timeout", run_id="run-9",
                                  source=Source(host="h", pid=1, rank=rank, world_size=8))
        return {"event": event.to_dict(), "channels": ["r"], "at": now, "not_before": now,
                "merge": {"key": "run-9|failed", "since": since, "rank": rank}}

    first, second, later = record(0), record(3), record(5, since=now + 1)
    joined = {}
    store.ingest([first], joined=joined)
    assert joined == {}
    store.ingest([second, first], joined=joined)  # the first read again is not joined to itself
    assert joined == {second["event"]["event_id"]: first["event"]["event_id"]}
    store.ingest([later], joined=joined)  # nothing stored since its window began: stored on its own
    assert joined == {}
    claimed = store.claim("r", "me")
    assert [c.event.event_id for c in claimed] == [first["event"]["event_id"], later["event"]["event_id"]]
    assert claimed[0].event.context["ranks"] == "0, 3"


def test_all_ranks_switch(afs_plugins, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    forget_current_source()
    manager = NotificationManager(plugins=afs_plugins, background=False, all_ranks=True)
    manager.register_handler("r", RecordingChannel())
    assert manager.notify_training_started("m", "r").delivered == ["r"]


def test_the_store_is_private_and_history_is_bounded(manager, tmp_path):
    channel = RecordingChannel()
    manager.register_handler("r", channel)
    for i in range(30):
        manager.notify(f"event {i}", "m", run_id="run-1")
    manager.flush(timeout=5)
    assert oct(os.stat(tmp_path / "afs.db").st_mode & 0o777) == "0o600"
    history = manager.store.history(run_id="run-1", limit=100)
    assert len(history) == 30 and history[0].title == "event 29"
    assert all(e.deliveries[0].status is DeliveryStatus.DELIVERED for e in history)
    assert manager.store.prune(max_events=10) == 20
    assert len(manager.store.history(limit=100)) == 10


CHILD = """
import os, sys, time
from afs_core import Channel, NotificationManager
from afs_core.source import forget_current_source
from afs_core.delivery.store import Store

class Slow(Channel):
    def deliver(self, message):
        time.sleep(float(os.environ.get("SLOW", "60")))
        with open(os.environ["OUT"], "a") as out:
            out.write(message.splitlines()[0] + "\\n")

manager = NotificationManager(background=True, store=Store(os.environ["DB"]),
                              flush_timeout=float(os.environ.get("FLUSH", "10")))
manager.register_handler("slow", Slow())
for i in range(int(os.environ.get("COUNT", "5"))):
    manager.notify(f"event {i}", "m")
print("accepted", flush=True)
if os.environ.get("HANG"):
    time.sleep(60)
"""


def run_child(tmp_path, **env):
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    full = {**os.environ, "DB": str(tmp_path / "afs.db"), "OUT": str(tmp_path / "out.txt"), **env}
    return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=full)


def test_events_of_a_killed_process_are_delivered_once_by_the_next(tmp_path, afs_plugins):
    child = run_child(tmp_path, HANG="1", SLOW="60")
    assert child.stdout.readline().strip() == "accepted"
    time.sleep(0.3)  # let its worker claim a delivery: that lease must not strand it
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    assert not (tmp_path / "out.txt").exists()

    channel = RecordingChannel()
    manager = NotificationManager(plugins=afs_plugins, store=Store(tmp_path / "afs.db"))
    manager.register_handler("slow", channel)
    deadline = time.monotonic() + 15
    while len(channel.messages) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    manager.close(timeout=5)
    titles = sorted(m.splitlines()[0] for m in channel.messages)
    assert titles == [f"ℹ️ event {i}" for i in range(5)]

    again = RecordingChannel()
    second = NotificationManager(plugins=afs_plugins, store=Store(tmp_path / "afs.db"))
    second.register_handler("slow", again)
    second.flush(timeout=2)
    second.close(timeout=2)
    assert again.messages == []


def test_pending_events_are_flushed_at_exit(tmp_path):
    started = time.monotonic()
    child = run_child(tmp_path, SLOW="0.1", COUNT="3", AFS_FLUSH_TIMEOUT="10")
    assert child.wait(timeout=30) == 0
    assert (tmp_path / "out.txt").read_text().splitlines() == [f"ℹ️ event {i}" for i in range(3)]
    assert time.monotonic() - started < 15


def test_exit_flush_gives_up_at_its_timeout_and_leaves_the_rest_pending(tmp_path):
    started = time.monotonic()
    child = run_child(tmp_path, SLOW="60", COUNT="3", FLUSH="1")
    child.stdout.readline()
    assert child.wait(timeout=30) == 0
    assert time.monotonic() - started < 8
    counts = Store(tmp_path / "afs.db").counts()
    assert counts["slow"].pending == 3


def test_two_processes_sharing_a_store_deliver_each_event_once(tmp_path):
    store = Store(tmp_path / "afs.db")
    for i in range(40):
        store.enqueue(NotificationEvent(EventType.TRAINING_STARTED, f"event {i}", "m"), ["slow"])
    children = [run_child(tmp_path, SLOW="0.01", COUNT="0", HANG="1") for _ in range(2)]
    deadline = time.monotonic() + 20
    out = tmp_path / "out.txt"
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 40):
        time.sleep(0.1)
    for child in children:
        child.kill()
        child.wait(timeout=10)
    lines = out.read_text().splitlines()
    assert sorted(lines) == sorted(f"ℹ️ event {i}" for i in range(40))


def test_a_failed_write_to_the_journal_still_delivers_and_leaves_no_torn_line(manager, monkeypatch):
    import afs_core.delivery.journal as journal_module

    monkeypatch.setattr(journal_module, "MAP_JOURNALS", False)  # a journal appended to with write()
    channel = RecordingChannel()
    manager.register_handler("r", channel)
    assert manager.notify("one", "m").wait(5)
    real_write = os.write
    calls = []

    def full_disk(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, data[: len(data) // 2])  # a short write...
        if len(calls) == 2:
            raise OSError(28, "No space left on device")  # ...then the disk is full
        return real_write(fd, data)

    monkeypatch.setattr(journal_module.os, "write", full_disk)
    two = manager.notify("two", "m")  # not in the journal: delivered from memory
    monkeypatch.setattr(journal_module.os, "write", real_write)
    assert len(calls) >= 2  # the short write, then the full disk (this journal is written with write())
    three = manager.notify("three", "m")
    assert two.rejected is None and two.wait(5) and two.delivered == ["r"]
    assert three.wait(5) and three.delivered == ["r"]
    assert [m.splitlines()[0] for m in channel.messages] == ["ℹ️ one", "ℹ️ two", "ℹ️ three"]
    assert manager.store.history(limit=5)[0].title == "three"  # the half line did not swallow the next one


def test_a_stored_event_that_cannot_be_read_does_not_block_its_channel(manager):
    channel = RecordingChannel()
    manager.store.enqueue(NotificationEvent(EventType.TRAINING_STARTED, "from another version", "m"), ["r"])
    manager.store._db().execute("UPDATE events SET data = '{\"event_type\": \"teleported\"}'")
    manager.register_handler("r", channel)
    result = manager.notify("after it", "m")
    assert result.wait(5) and result.delivered == ["r"]
    dead = manager.store.outbox()
    assert dead[0].status is DeliveryStatus.FAILED and "could not be read" in dead[0].last_error


def test_slow_sends_keep_their_leases_so_no_second_process_sends_them(afs_plugins, tmp_path, monkeypatch):
    import afs_core.delivery.engine as engine_module

    monkeypatch.setattr(engine_module, "LEASE_SECONDS", 0.6)
    store_path = tmp_path / "afs.db"
    Store(store_path)
    sent = []
    lock = threading.Lock()

    class Slow(Channel):
        def __init__(self, who):
            self.who = who

        def deliver(self, message):
            time.sleep(0.25)
            with lock:
                sent.append(message.splitlines()[0])

    feeder = Store(store_path)
    for i in range(6):
        feeder.enqueue(NotificationEvent(EventType.TRAINING_STARTED, f"event {i}", "m"), ["slow"])
    managers = [NotificationManager(plugins=afs_plugins, store=Store(store_path)) for _ in range(2)]
    for index, each in enumerate(managers):
        each.register_handler("slow", Slow(index))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and Store(store_path).pending(["slow"]).total:
        time.sleep(0.05)
    for each in managers:
        each.close(timeout=2)
    assert sorted(sent) == sorted(f"ℹ️ event {i}" for i in range(6))


def test_a_throttled_type_that_fails_once_is_still_delivered(manager):
    channel = Scripted(TransientDeliveryError("HTTP 503"))
    manager.register_handler("ckpt", channel, policy=ChannelPolicy(throttle_window=600))
    result = manager.notify_checkpoint_saved("m", "r", "ckpt/1")
    assert result.wait(10) and result.delivered == ["ckpt"] and len(channel.attempts) == 2


def test_repeats_held_back_with_no_later_event_are_summed_up_at_close(afs_plugins, tmp_path):
    channel = RecordingChannel()
    manager = NotificationManager(plugins=afs_plugins, store=Store(tmp_path / "afs.db"))
    manager.register_handler("quiet", channel, policy=ChannelPolicy(throttle_window=600))
    for step in range(4):
        manager.notify_batch_processed("m", "r", batch=step)
    manager.close(timeout=5)
    assert len(channel.messages) == 2
    assert "3 more 'batch processed' held back" in channel.messages[-1]


def test_a_forked_child_never_touches_the_store_and_its_events_still_go_out(manager):
    channel = RecordingChannel()
    manager.register_handler("r", channel)
    assert manager.notify("parent", "m").wait(5)
    pid = os.fork()
    if pid == 0:  # the child, as a data-loader worker would be: notify, close, leave
        code = 1
        try:
            started = time.monotonic()
            accepted = manager.notify("child", "m").rejected is None
            manager.close(timeout=1)  # must not wait on the store: the child never opens it
            code = 0 if accepted and time.monotonic() - started < 2 else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    deadline = time.monotonic() + 15  # the parent picks up the stopped child's journal
    while time.monotonic() < deadline and len(channel.messages) < 2:
        time.sleep(0.05)
    assert [m.splitlines()[0] for m in channel.messages] == ["ℹ️ parent", "ℹ️ child"]


def test_an_unusable_afs_home_is_a_configuration_error(afs_plugins, tmp_path, monkeypatch):
    from afs_core.errors import ConfigurationError

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("AFS_HOME", str(blocker / "afs"))
    with pytest.raises(ConfigurationError, match="AFS_HOME"):
        NotificationManager.from_env(plugins=afs_plugins)


def test_due_deliveries_go_out_oldest_event_first_a_retried_one_included(tmp_path):
    """A run's "started" that waited out a retry still goes before its "completed"."""
    from afs_core.delivery.store import Store
    from afs_core.results import DeliveryStatus
    from afs_core.testing import ManualClock

    clock = ManualClock()
    store = Store(tmp_path / "afs.db", clock=clock)
    store.enqueue(NotificationEvent(EventType.TRAINING_STARTED, "started", "m"), ["c"])
    (first,) = store.claim("c", "tester:1:1")
    store.finish_many([(first.delivery_id, DeliveryStatus.PENDING, "503", clock.time() + 30)], "tester:1:1")
    clock.advance(10)
    store.enqueue(NotificationEvent(EventType.TRAINING_COMPLETED, "completed", "m"), ["c"])
    clock.advance(30)
    assert [c.event.title for c in store.claim("c", "tester:1:1")] == ["started", "completed"]


def test_an_idle_worker_looks_for_other_processes_work_less_and_less_often(afs_plugins, tmp_path):
    """Each look for deliveries other processes left lets the GIL go a dozen times: with
    none pending the looks grow apart (1, 2, then every 4 s), and a look that finds none
    due only reads (no claim, which takes the store's write lock); one such delivery is
    still taken within the longest gap."""
    from afs_core.testing import ManualClock

    seen = threading.Condition()  # the worker's waits and deliveries, waited for in real time, bounded
    waits, delivered, claims = [], [], []

    class Claims(Store):
        def claim(self, channel, owner, **kwargs):
            claims.append(channel)
            return super().claim(channel, owner, **kwargs)

    class Watched(ManualClock):
        def wait(self, event, timeout):
            if threading.current_thread().name == "afs-quiet":
                with seen:
                    waits.append(timeout)
                    seen.notify_all()
            return super().wait(event, timeout)

    class Counted(RecordingChannel):
        def deliver(self, message):
            with seen:
                delivered.append(message)
                seen.notify_all()

    clock = Watched(real_slice=60.0)  # a wait ends only when the clock passes it (or a wake-up)
    store = Claims(tmp_path / "afs.db", clock=clock)
    manager = NotificationManager(plugins=afs_plugins, store=store)
    try:
        manager.register_handler("quiet", Counted())
        for looks, gap in enumerate([1.0, 2.0, 4.0, 4.0], start=1):
            with seen:
                assert seen.wait_for(lambda n=looks: len(waits) == n, 10.0), waits
            assert waits[-1] == gap
            clock.advance(gap)  # the worker waits no longer: it looks again
        with seen:
            assert seen.wait_for(lambda: len(waits) == 5, 10.0), waits
        assert waits[-1] == 4.0
        assert claims == []  # five looks, none due: read, never claimed
        # Another process's delivery, stored without waking this worker, while it waits:
        store.enqueue(NotificationEvent(EventType.TRAINING_STARTED, "from elsewhere", "m"), ["quiet"])
        time.sleep(0.05)
        assert delivered == []  # not before the look
        clock.advance(4.0)
        with seen:
            assert seen.wait_for(lambda: len(delivered) == 1, 10.0)
        assert claims[0] == "quiet"
    finally:
        clock.real_slice = 0.05  # the closing flush's waits: a clock no one moves now
        manager.close(timeout=5)


class TimeBoxed(Channel):
    """A batch channel that gets to two messages a call: the rest are not sent."""

    batch_size = 5

    def __init__(self):
        self.sent = []
        self.calls = 0

    def deliver(self, message):
        self.sent.append(message)

    def deliver_batch(self, messages):
        from afs_core.errors import NotSent

        self.calls += 1
        self.sent.extend(messages[:2])
        return [None, None] + [NotSent("the batch's time ran out") for _ in messages[2:]]


def test_what_a_batch_did_not_get_to_goes_next_in_order_and_costs_no_attempt(manager, tmp_path):
    channel = TimeBoxed()
    manager.register_handler("boxed", channel, policy=ChannelPolicy(throttle_window=0))
    sent = [manager.notify_checkpoint_saved("m", "r", f"/ckpt/{n}", step=n) for n in range(9)]
    assert manager.flush(timeout=20)
    assert [message for message in channel.sent] == [channel.format(result.event) for result in sent]  # once, in order
    assert all(result.wait(5) and result.ok for result in sent)
    with sqlite3.connect(tmp_path / "afs.db") as db:
        attempts = db.execute("SELECT d.attempts, a.outcome FROM deliveries d JOIN attempts a ON a.delivery_id = d.id"
                              " WHERE d.channel = 'boxed'").fetchall()
    assert attempts == [(1, "delivered")] * 9  # not sent is no attempt: no retry, no wait


@pytest.mark.parametrize(("timeouts", "lease"), [(None, 3 * 50.0 * 5), (1, 3 * 50.0)])
def test_a_claim_outlasts_the_longest_batch_the_channel_says_it_can_take(manager, timeouts, lease):
    class Slow(TimeBoxed):
        timeout = 50.0
        batch_timeouts = timeouts

    manager.register_channel("slow", Slow())
    manager.notify_training_started("m", "r")
    assert manager._get_engine()._workers["slow"].lease == lease


def test_a_batch_that_never_gets_to_any_message_is_asked_again_after_a_pause_not_at_once(manager):
    class Stuck(TimeBoxed):
        def deliver_batch(self, messages):
            from afs_core.errors import NotSent

            self.calls += 1
            return [NotSent("no time") for _ in messages]

    channel = Stuck()
    manager.register_channel("stuck", channel)
    # Taken in together, so claimed together: one message alone goes to deliver(), not
    # deliver_batch() (on a busy machine the ingest thread could take the first alone).
    with manager._get_engine()._ingest_lock:
        manager.notify_training_started("m", "r")
        manager.notify_training_started("m", "r2")
    began = time.monotonic()
    assert not manager.flush(timeout=1.2)  # still pending, never failed: nothing was sent
    elapsed = time.monotonic() - began
    assert 1 <= channel.calls <= 2 + elapsed / 0.5  # one ask per pause, not a spin
    assert manager._get_engine().pending().total == 2
    manager.close(timeout=0.5)


@pytest.mark.parametrize("hooked", [False, True])
def test_where_a_plugin_delivers_each_message_a_claim_holds_one_message_and_its_lease_one_timeout(
        manager, afs_plugins, hooked):
    """A plugin's afs_deliver takes messages one at a time, each with its timeout: the
    engine then hands the channel one a time, so the lease made for one batch's time
    still outlasts each send (with a chunk of five, it would not)."""
    class Watch:
        @hookimpl(wrapper=True)
        def afs_deliver(self, message, channel, event):
            return (yield)

    class Boxed(TimeBoxed):
        timeout = 50.0
        batch_timeouts = 1

        def deliver_batch(self, messages):
            self.calls += 1
            self.sent.extend(messages)
            return [None] * len(messages)

    if hooked:
        afs_plugins.register(Watch(), name="watch")
    channel = Boxed()
    manager.register_handler("boxed", channel, policy=ChannelPolicy(throttle_window=0))
    for n in range(4):
        manager.notify_checkpoint_saved("m", "r", f"/ckpt/{n}", step=n)
    assert manager.flush(timeout=10)
    worker = manager._get_engine()._workers["boxed"]
    assert (worker.batch, worker.lease) == ((1, 150.0) if hooked else (5, 150.0))
    assert len(channel.sent) == 4 and (channel.calls == 0) is hooked  # each through the plugin's hook


def test_an_event_its_batch_did_not_get_to_is_not_taken_for_a_repeat_of_itself(manager):
    """Checkpoints are held back when they repeat (default throttle): one judged and then
    not sent goes next as it was judged, not as a second checkpoint of its run."""
    channel = TimeBoxed()
    manager.register_channel("boxed", channel)  # the default policy: repeats held back
    sent = [manager.notify_checkpoint_saved("m", f"run-{n}", f"/ckpt/{n}", step=n) for n in range(5)]
    assert manager.flush(timeout=20)
    assert channel.sent == [channel.format(result.event) for result in sent]
    assert all(result.wait(5) and result.ok for result in sent)
