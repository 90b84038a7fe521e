"""Degrade, never crash: a home that cannot be written, a damaged store, a full disk.

Each machine state is met as a user meets it: a training script in its own process,
with a channel delivering to a loopback webhook, and what ``afs`` says afterwards.
"""

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import threading
import time

import pytest

from afs_core import (
    Channel,
    EventType,
    NotificationEvent,
    NotificationManager,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from afs_core.delivery.repeats import RepeatedLog
from afs_core.delivery.retry import RetryPolicy
from afs_core.delivery.store import Store
from afs_core.results import DeliveryStatus
from afs_core.source import host_name
from afs_core.testing import RecordingChannel

TRAIN = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
from afs_core import NotificationManager
manager = NotificationManager.from_env()
for i in range({count}):
    manager.notify_training_completed("m", f"run-{{i}}", 1.0)
print(manager.flush(timeout=30), manager.get_status()["store"], manager.not_durable, sep="|")
"""


def ids_of(server):
    return [r.json["id"] for r in server.received]


def titles_of(server):
    return [r.json["run_id"] for r in server.received]


@pytest.fixture
def no_home(tmp_path):
    """HOME where nobody can write (not even root: it is inside /proc), AFS_HOME unset,
    and a temporary directory of the test's own."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    return {"AFS_HOME": None, "HOME": "/proc/afs-no-such-home", "XDG_DATA_HOME": None, "TMPDIR": str(temp)}


def test_a_home_that_cannot_be_written_moves_the_store_to_a_private_temporary_directory(runs, webhook_server,
                                                                                         no_home):
    env = runs.env(webhook_server.url + "/hook", **no_home)
    done = runs.python(TRAIN.format(count=2), env)
    assert done.returncode == 0, done.stderr
    flushed, store, not_durable = done.stdout.strip().split("|")
    private = os.path.join(no_home["TMPDIR"], f"afs-{os.getuid()}")
    assert flushed == "True" and store == os.path.join(private, "afs.db") and not_durable == "None"
    assert titles_of(webhook_server) == ["run-0", "run-1"]
    assert f"the outbox and history are in {private}/afs.db" in done.stderr
    assert oct(os.stat(private).st_mode & 0o777) == "0o700"

    complete = runs.afs(env, "complete", "--model", "m", "--run-id", "run-9", "--duration", "5")
    assert complete.returncode == 0 and complete.stdout.strip() == "hook: delivered"
    status = runs.afs(env, "status")
    assert status.stdout.splitlines()[0] == f"outbox     {private}/afs.db"


def test_an_afs_home_the_user_set_that_cannot_be_used_is_shown_at_start_up(runs, webhook_server):
    env = runs.env(webhook_server.url + "/hook", AFS_HOME="/proc/afs", HOME="/proc/afs-no-such-home")
    done = runs.python("from afs_core import NotificationManager\nNotificationManager.from_env()\n", env)
    assert done.returncode == 1
    assert "ConfigurationError: AFS_HOME '/proc/afs' cannot hold the outbox" in done.stderr
    complete = runs.afs(env, "complete", "--model", "m", "--run-id", "r", "--duration", "5")
    assert complete.returncode == 2 and "AFS_HOME '/proc/afs' cannot hold the outbox" in complete.stderr
    assert webhook_server.received == []


def test_with_no_place_for_a_store_events_are_delivered_from_memory_and_that_is_said(runs, webhook_server,
                                                                                     no_home):
    (runs.tmp_path / "tmp" / f"afs-{os.getuid()}").write_text("not a directory")
    env = runs.env(webhook_server.url + "/hook", **no_home)
    done = runs.python(TRAIN.format(count=3), env)
    assert done.returncode == 0, done.stderr
    flushed, store, not_durable = done.stdout.strip().split("|")
    assert flushed == "True" and store == "None" and not_durable.startswith("no place could hold the store")
    assert titles_of(webhook_server) == ["run-0", "run-1", "run-2"]
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "not durable: no place could hold the store" in warnings[0]
    status = runs.afs(env, "status")
    assert status.stdout.splitlines()[0].startswith("outbox     not durable: no place could hold the store (")


def test_a_store_that_is_not_a_database_is_kept_aside_and_the_run_goes_on(runs, webhook_server):
    runs.home.mkdir()
    junk = os.urandom(64 * 1024)
    (runs.home / "afs.db").write_bytes(junk)
    done = runs.python(TRAIN.format(count=1), runs.env(webhook_server.url + "/hook"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("True|") and titles_of(webhook_server) == ["run-0"]
    (aside,) = runs.home.glob("afs.db.corrupt-*[0-9]")
    assert aside.read_bytes() == junk  # kept, never deleted
    assert f"was damaged (file is not a database); it was kept as {aside.name}" in done.stderr
    history = runs.afs(runs.env(webhook_server.url + "/hook"), "history", "--json")
    assert [e["run_id"] for e in json.loads(history.stdout)] == ["run-0"]


def test_a_store_cut_short_by_a_crash_is_replaced_and_what_was_pending_still_goes_out(runs, webhook_server):
    path = runs.home / "afs.db"
    store = Store(path)
    events = [NotificationEvent(EventType.TRAINING_COMPLETED, f"event {i}", "m" * 300, run_id=f"old-{i}")
              for i in range(300)]
    for event in events:
        store.enqueue(event, ["hook"])
    owner = f"{host_name()}:999999:1"  # the process that had claimed them died with the machine
    done_before = [c for c in store.claim("hook", owner, limit=300) if int(c.event.run_id[4:]) >= 60]
    store.finish_many([(c.delivery_id, DeliveryStatus.DELIVERED, None, None) for c in done_before], owner)
    with store._read() as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    with open(path, "r+b") as handle:  # the machine crashed: half the file never reached the disk
        handle.truncate(os.path.getsize(path) // 2)

    done = runs.python(TRAIN.format(count=1), runs.env(webhook_server.url + "/hook"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("True|")
    (aside,) = runs.home.glob("afs.db.corrupt-*[0-9]")
    assert f"it was kept as {aside.name}" in done.stderr and "60 deliveries still pending" in done.stderr
    sent = titles_of(webhook_server)
    assert sorted(sent) == sorted([f"old-{i}" for i in range(60)] + ["run-0"])  # never the delivered ones again


def test_a_journal_line_torn_by_a_kill_is_skipped_and_the_rest_delivered(runs, webhook_server):
    journal = runs.home / "journal"
    journal.mkdir(parents=True)
    good = [NotificationEvent(EventType.TRAINING_COMPLETED, f"event {i}", "m", run_id=f"left-{i}") for i in range(3)]
    lines = [json.dumps({"event": e.to_dict(), "channels": ["hook"], "at": time.time()}) for e in good]
    lines.insert(2, "\x00\x00 garbage")
    torn = json.dumps({"event": good[0].to_dict(), "channels": ["hook"]})[:40]
    (journal / f"{host_name()}-999999-1.jsonl").write_text("\n".join(lines) + "\n" + torn)
    done = runs.python(TRAIN.format(count=0), runs.env(webhook_server.url + "/hook"))
    assert done.returncode == 0, done.stderr and done.stdout.startswith("True|")
    assert titles_of(webhook_server) == ["left-0", "left-1", "left-2"]


FULL_DISK = """
import json, logging, os, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
from afs_core import NotificationManager
manager = NotificationManager.from_env()
filler = os.path.join(os.environ["MOUNT"], "filler")

def fill():  # unbuffered: no write left over for close() to fail on
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"x" * 65536)
    except OSError:
        pass
    finally:
        os.close(fd)

phases = {"before": [], "full": [], "after": []}
slowest, rejected, durability = 0.0, 0, {}
for i in range(3000):
    phase = "before" if i < 1000 else "full" if i < 2000 else "after"
    if i == 1000:
        fill()
    if i == 2000:
        durability["full"] = manager.not_durable
        durability["flush_while_full"] = manager.flush(timeout=0)
        os.unlink(filler)
    started = time.perf_counter()
    result = manager.notify(f"event {i}", "m", run_id=phase)
    slowest = max(slowest, time.perf_counter() - started)
    rejected += result.rejected is not None
    phases[phase].append(result.event.event_id)
    if i % 50 == 0:
        time.sleep(0.005)  # a training step
flushed = manager.flush(timeout=120)
durability["after"] = manager.not_durable
print(json.dumps({"phases": phases, "slowest": slowest, "rejected": rejected, "flushed": flushed, **durability}))
"""


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"this machine does not let the tests mount a tmpfs: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_disk_that_fills_up_during_a_burst_degrades_then_recovers(runs, webhook_server, small_disk):
    env = runs.env(webhook_server.url + "/hook", AFS_HOME=str(small_disk / "afs"), MOUNT=str(small_disk))
    done = runs.python(FULL_DISK, env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    phases = report["phases"]
    assert report["rejected"] == 0 and report["slowest"] < 0.5  # notify() never raised nor stalled
    assert report["full"] and "delivered from memory" in report["full"]  # said, while it lasted
    assert report["flush_while_full"] is False and report["flushed"] is True and report["after"] is None
    sent = ids_of(webhook_server)
    expected = phases["before"] + phases["full"] + phases["after"]
    assert sorted(sent) == sorted(expected) and len(sent) == 3000, done.stderr[-5000:]  # every event, once
    problems = [line for line in done.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert 1 <= len(problems) <= 6, problems  # a handful, not one per event
    stored = {e.event_id for e in Store(small_disk / "afs" / "afs.db").history(limit=5000)}
    assert set(phases["after"]) <= stored  # durable again once there was room


def fill_up(store, monkeypatch):
    """``store`` cannot be written (as on a full disk) until the returned function is called."""
    real_ingest = Store.ingest

    def full(self, records, marks=None, **kwargs):
        if self is store:
            raise sqlite3.OperationalError("database or disk is full")
        return real_ingest(self, records, marks, **kwargs)

    monkeypatch.setattr(Store, "ingest", full)
    return lambda: monkeypatch.setattr(Store, "ingest", real_ingest)


class Refusing(Channel):
    def deliver(self, message):
        raise PermanentDeliveryError("HTTP 403: invalid_token")


def test_a_dead_channel_is_logged_once_with_a_count_not_once_per_event(afs_plugins, tmp_path, caplog):
    manager = NotificationManager(plugins=afs_plugins, store=Store(tmp_path / "afs.db"))
    manager.register_handler("dead", Refusing())
    with caplog.at_level(logging.INFO, logger="afs"):
        results = [manager.notify(f"event {i}", "m") for i in range(200)]
        assert manager.flush(timeout=30) is True
        manager.close(timeout=5)
    assert all(r.failed == {"dead": "HTTP 403: invalid_token"} for r in results)
    lines = [r.getMessage() for r in caplog.records if "failed for good" in r.getMessage()]
    assert len(lines) == 2, lines  # the first, and the count at close
    assert "(and 199 more times in the last" in lines[1]


def test_while_the_store_cannot_be_written_events_go_out_from_memory_and_flush_tells_the_truth(
        afs_plugins, tmp_path, monkeypatch):
    store = Store(tmp_path / "afs.db")
    manager = NotificationManager(plugins=afs_plugins, store=store)
    gate = threading.Event()

    class Gated(RecordingChannel):
        def deliver(self, message):
            if not gate.wait(10):
                raise PermanentDeliveryError("gate stayed shut")
            super().deliver(message)

    channel = Gated()
    manager.register_handler("r", channel)
    room_again = fill_up(store, monkeypatch)
    result = manager.notify("while full", "m")
    assert manager.flush(timeout=0.5) is False  # accepted, not delivered: not True
    assert "delivered from memory" in manager.not_durable
    gate.set()
    assert result.wait(10) and result.delivered == ["r"] and manager.flush(timeout=10) is True
    room_again()
    later = manager.notify("after", "m")
    assert later.wait(10) and manager.not_durable is None
    assert [e.title for e in store.history()] == ["after"]  # durable again; the memory-only one is not
    manager.close(timeout=5)


def test_a_repeated_failure_is_one_line_then_a_count():
    now = [0.0]
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("afs.test-repeats")
    logger.addHandler(Collect())
    logger.setLevel(logging.INFO)
    repeated = RepeatedLog(logger, window=60.0, clock=lambda: now[0])
    for _ in range(2682):
        repeated.log(logging.ERROR, "journal", "afs: the journal cannot be written (%s)", "No space left on device")
        now[0] += 0.02
    assert records == ["afs: the journal cannot be written (No space left on device)"]
    now[0] = 60.0
    repeated.log(logging.ERROR, "journal", "afs: the journal cannot be written (%s)", "No space left on device")
    assert records[1] == ("afs: the journal cannot be written (No space left on device)"
                          " (and 2,681 more times in the last 60 s)")


def test_what_waited_in_memory_goes_back_into_the_store_once_it_can_be_written(afs_plugins, tmp_path, monkeypatch,
                                                                                caplog):
    from afs_core import TransientDeliveryError
    from afs_core.delivery.retry import RetryPolicy

    class Down(Channel):
        def deliver(self, message):
            raise TransientDeliveryError("HTTP 503")

    store = Store(tmp_path / "afs.db")
    manager = NotificationManager(plugins=afs_plugins, store=store, retry=RetryPolicy(base=600, cap=600))
    manager.register_channel("down", Down())
    room_again = fill_up(store, monkeypatch)
    for i in range(5):
        manager.notify(f"while full {i}", "m")
    deadline = time.monotonic() + 10
    memory = manager._engine._memory_store()
    while time.monotonic() < deadline and sum(e.attempts for e in memory.outbox()) < 5:
        time.sleep(0.01)  # each tried once, and waiting for its retry
    assert store.pending(["down"]).total == 0  # only in memory so far
    room_again()
    manager.notify("room again", "m")
    while time.monotonic() < deadline and store.pending(["down"]).total < 6:
        time.sleep(0.01)
    with caplog.at_level(logging.WARNING, logger="afs"):
        manager.close(timeout=0)
    assert store.pending(["down"]).total == 6 and "lost" not in caplog.text  # the next run delivers all six
    # retries still: not taken for repeats of themselves, nor given a fresh budget
    assert [e.attempts for e in store.outbox() if e.title.startswith("while full")] == [1] * 5
    assert sorted(e.title for e in Store(tmp_path / "afs.db").history())[:2] == ["room again", "while full 0"]


class Holding(Channel):
    """A batch channel that gets to no message holding a word of ``hold`` (NotSent)."""

    batch_size = 4

    def __init__(self, *hold):
        self.hold, self.sent, self.batches = set(hold), [], 0

    def deliver(self, message):
        if any(word in str(message) for word in self.hold):
            raise TransientDeliveryError("not yet")  # alone: a try that failed
        self.sent.append(message)

    def deliver_batch(self, messages):
        from afs_core.errors import NotSent

        self.batches += 1
        results = []
        for message in messages:
            if any(word in str(message) for word in self.hold):
                results.append(NotSent("not yet"))
            else:
                self.sent.append(message)
                results.append(None)
        return results


def test_an_event_its_batch_did_not_get_to_is_lent_to_no_delivery_of_another_store(afs_plugins, tmp_path,
                                                                                    monkeypatch):
    """Deliveries are numbered by their store: the in-memory store a full disk leaves
    numbers from one as well. An event judged and not sent in one store's claim must
    never go out in place of another store's delivery of the same number."""
    from afs_core.delivery import engine as engine_module
    from afs_core.delivery.policy import ChannelPolicy

    monkeypatch.setattr(engine_module, "MAX_NOT_SENT", 1)  # a claim lets go of what it cannot send soon
    monkeypatch.setattr(engine_module, "NOTHING_SENT_PAUSE", 0.05)
    store = Store(tmp_path / "afs.db")
    manager = NotificationManager(plugins=afs_plugins, store=store, settings={},
                                  retry=RetryPolicy(max_attempts=100, base=0.05, cap=0.1))
    channel = Holding("EVENT-A")
    manager.register_handler("holding", channel, policy=ChannelPolicy(throttle_window=0))
    try:
        held = [manager.notify(f"EVENT-A{n}", "m") for n in (1, 2)]  # the file store's deliveries 1 and 2
        deadline = time.monotonic() + 10
        while channel.batches < 4 and time.monotonic() < deadline:  # a claim of them let go, and the next
            time.sleep(0.01)
        room = fill_up(store, monkeypatch)
        taken = [manager.notify(f"EVENT-B{n}", "m") for n in (1, 2)]  # the memory store's 1 and 2
        assert all(result.wait(10) and result.ok for result in taken)
        assert [_title(message) for message in channel.sent] == ["EVENT-B1", "EVENT-B2"]
        channel.hold.clear()
        room()
        assert manager.flush(timeout=10) and all(result.wait(5) and result.ok for result in held)
    finally:
        manager.close(timeout=2)
    assert sorted(_title(message) for message in channel.sent) == ["EVENT-A1", "EVENT-A2", "EVENT-B1", "EVENT-B2"]


def _title(message):
    return str(message).splitlines()[0].split()[-1]  # after the level's sign
