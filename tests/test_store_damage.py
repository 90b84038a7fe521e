"""A damaged store is replaced in one step, keeping what can be read, under live users."""

import os
import sqlite3
import subprocess
import sys

import pytest

from afs_core import EventType, NotificationEvent
from afs_core.delivery.salvage import salvage
from afs_core.delivery.store import Store, _owner_is_dead, _pid_namespace, owner_id
from afs_core.results import DeliveryStatus
from afs_core.source import host_name


def filled(path, count=400, pending_from=0):
    """A store with ``count`` events for channel ``c``; those below ``pending_from`` delivered."""
    store = Store(path)
    for i in range(count):
        store.enqueue(NotificationEvent(EventType.TRAINING_COMPLETED, f"event {i}", "m" * 200, run_id=f"r{i}"), ["c"])
    owner = "tester:1:1"
    done = [c for c in store.claim("c", owner, limit=count) if int(c.event.run_id[1:]) < pending_from]
    store.finish_many([(c.delivery_id, DeliveryStatus.DELIVERED, None, None) for c in done], owner)
    for claimed in store.claim("c", owner, limit=count):
        store.release(claimed.delivery_id, owner)
    with store._read() as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    return store


def first_leaf(path):
    """The page number of the first leaf of old history (events)."""
    db = sqlite3.connect(path)  # closed at once: a connection left open would hold the file
    try:
        return db.execute("SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'leaf'"
                          " ORDER BY pageno LIMIT 1").fetchone()[0]
    finally:
        db.close()


def salvaged_from(damaged, tmp_path):
    target = sqlite3.connect(tmp_path / "fresh.db", isolation_level=None)
    from afs_core.delivery.store import _SCHEMA

    target.executescript(_SCHEMA)
    return salvage(damaged, target)


def test_a_store_whose_header_was_zeroed_is_read_back_whole(tmp_path):
    path = tmp_path / "afs.db"
    filled(path)
    with open(path, "r+b") as handle:
        handle.write(b"\0" * 100)
    events, pending = salvaged_from(path, tmp_path)
    assert (events, pending) == (400, 400)


def test_rows_around_a_damaged_run_of_pages_are_read_back(tmp_path):
    path = tmp_path / "afs.db"
    filled(path)
    size = os.path.getsize(path)
    page = 4096
    with open(path, "r+b") as handle:  # the middle third of the file turns to zeros
        start = (size // 3) // page * page
        handle.seek(start)
        handle.write(b"\0" * ((size // 3) // page * page))
    events, pending = salvaged_from(path, tmp_path)
    assert events >= 200 and pending >= 120  # before: the scan jumped over most of what was intact


def test_a_live_process_keeps_working_while_another_replaces_the_damaged_store(tmp_path):
    path = tmp_path / "afs.db"
    filled(path, count=200, pending_from=100)
    live = Store(path)  # a process that has the store open and a delivery in hand
    (claimed,) = live.claim("c", owner_id(), limit=1)
    leaf = first_leaf(path)  # damage a page of old history, behind everybody's back
    with open(path, "r+b") as handle:
        handle.seek((leaf - 1) * 4096)
        handle.write(os.urandom(4096))
    finder = Store(path)  # another process starts, and its check finds the damage
    assert finder.check() is False
    asides = list(tmp_path.glob("afs.db.corrupt-*[0-9]"))
    assert len(asides) == 1
    # The live process is on the fresh store at its next call, its lease intact.
    assert live.finish_many([(claimed.delivery_id, DeliveryStatus.DELIVERED, None, None)], owner_id()) == [True]
    assert live.pending(["c"]).total == finder.pending(["c"]).total > 0
    assert Store(path).check() is True  # replaced once: the fresh store is sound
    assert len(list(tmp_path.glob("afs.db.corrupt-*[0-9]"))) == 1


@pytest.mark.parametrize(("namespace", "dead"), [(None, True), ("same", True), ("pid:[1]", False)])
def test_a_lease_owner_in_another_pid_namespace_is_not_taken_for_dead(namespace, dead):
    owner = f"{host_name()}:999999:1"  # no such pid here
    if namespace == "same":
        owner += f"@{_pid_namespace()}"
    elif namespace is not None:
        owner += f"@{namespace}"  # a container's pid 999999 may well be alive
    assert _owner_is_dead(owner) is dead


@pytest.fixture
def read_only_mount(tmp_path):
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a read-only bind mount needs root")
    source, mount = tmp_path / "home", tmp_path / "read-only"
    source.mkdir()
    mount.mkdir()
    yield source, mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_store_on_a_read_only_mount_can_still_be_looked_at(read_only_mount, monkeypatch, runs):
    import subprocess

    source, mount = read_only_mount
    filled(source / "afs.db", count=3)
    for step in (["mount", "--bind", str(source), str(mount)], ["mount", "-o", "remount,ro,bind", str(mount)]):
        if subprocess.run(step, capture_output=True).returncode != 0:
            pytest.skip("this machine does not let the tests make a read-only bind mount")
    env = runs.env("http://127.0.0.1:9/hook", AFS_HOME=str(mount))
    history = runs.afs(env, "history")
    assert history.returncode == 0 and len(history.stdout.splitlines()) == 3
    status = runs.afs(env, "status")
    assert "read-only" in status.stdout.splitlines()[0] and "[3 pending, 0 dead]" not in status.stdout  # no hook row
    assert runs.afs(env, "outbox").stdout.count(" pending ") == 3
    sending = runs.afs(env, "complete", "--model", "m", "--run-id", "r", "--duration", "1")
    assert sending.returncode == 2 and "cannot hold the outbox" in sending.stderr  # a store that cannot take it



def test_a_hosts_own_store_on_a_read_only_shared_mount_is_found(read_only_mount, monkeypatch):
    import subprocess

    import afs_core.delivery.location as location_module
    from afs_core.delivery.store import open_store

    source, mount = read_only_mount
    filled(source / f"afs-{host_name()}.db", count=3)  # a shared filesystem: a file per host
    for step in (["mount", "--bind", str(source), str(mount)], ["mount", "-o", "remount,ro,bind", str(mount)]):
        if subprocess.run(step, capture_output=True).returncode != 0:
            pytest.skip("this machine does not let the tests make a read-only bind mount")
    table = source.parent / "mountinfo"
    table.write_text(f"22 1 0:1 / / rw - ext4 /dev/sda1 rw\n812 22 0:52 / {mount} ro - nfs4 fs:/home ro\n")
    monkeypatch.setattr(location_module, "MOUNT_TABLE", str(table))
    store = open_store({"AFS_HOME": str(mount)}, read_only_ok=True)
    assert store.read_only and store.path == mount / f"afs-{host_name()}.db"
    assert len(store.history()) == 3


def test_a_store_replaced_while_its_own_worker_sends_delivers_each_event_once(afs_plugins, tmp_path):
    import threading
    import time

    from afs_core import Channel, NotificationManager

    path = tmp_path / "afs.db"
    filled(path, count=400, pending_from=100)  # 100 delivered long ago, 300 still to go
    sent = []
    first = threading.Event()

    class Steady(Channel):
        def deliver(self, message):
            sent.append(message.splitlines()[0])
            first.set()
            time.sleep(0.002)

    store = Store(path)
    manager = NotificationManager(plugins=afs_plugins, store=store)
    leaf = first_leaf(path)
    manager.register_channel("c", Steady())
    assert first.wait(10)
    with open(path, "r+b") as handle:  # old history goes bad while the worker is busy
        handle.seek((leaf - 1) * 4096)
        handle.write(os.urandom(4096))
    assert Store(path).check() is False  # replaced under the running worker
    try:
        assert manager.flush(timeout=60) is True
    finally:
        manager.close(timeout=5)
    assert len(sent) == len(set(sent)) == 300  # every pending event, once


HOLD_A_FRESH_STORE = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("CREATE TABLE IF NOT EXISTS first (a)")  # the first rank, still setting the store up
db.execute("BEGIN IMMEDIATE")
db.execute("INSERT INTO first VALUES (1)")
print("holding", flush=True)
time.sleep(0.8)
db.execute("COMMIT")
"""


def test_a_process_starting_while_another_sets_the_store_up_waits_for_it(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "afs.db"
    first = subprocess.Popen([sys.executable, "-c", HOLD_A_FRESH_STORE, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "holding"
        store = Store(path)  # switching a fresh store to WAL needs the lock: SQLite says "locked" at once
        assert store.counts() == {}
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        first.wait(timeout=10)




TITLES = "import sqlite3, sys; print([r[0] for r in sqlite3.connect(sys.argv[1]).execute('SELECT title FROM events')])"

DELIVER_SOME_THEN_WAIT = """
import sys
from afs_core.delivery.store import Store
from afs_core.results import DeliveryStatus
store = Store(sys.argv[1])
owner = "tester:1:1"
done = [c for c in store.claim("c", owner, limit=1000) if int(c.event.run_id[1:]) >= 40]
store.finish_many([(c.delivery_id, DeliveryStatus.DELIVERED, None, None) for c in done], owner)
with store._read() as db:
    print(db.execute("SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'leaf'"
                     " ORDER BY pageno LIMIT 1").fetchone()[0], flush=True)
sys.stdin.readline()  # killed here: what it wrote is in the WAL only
"""

RECOVER_AND_DIE_BEFORE_THE_SWAP = """
import os, sys
from afs_core.delivery.store import Store
store = Store(sys.argv[1])
os.replace = lambda *args: os._exit(9)  # killed as the fresh store is about to take the name
store.check()
"""


def test_a_recovery_killed_before_the_swap_leaves_the_damaged_store_whole(tmp_path):
    path = tmp_path / "afs.db"
    filled(path, count=60, pending_from=0)  # checkpointed: all 60 pending in the main file
    writer = subprocess.Popen([sys.executable, "-c", DELIVER_SOME_THEN_WAIT, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        leaf = int(writer.stdout.readline())
        # damage a page of the main file, under the WAL's deliveries (opening the store
        # here to find the page would checkpoint the WAL into it first)
        with open(path, "r+b") as handle:
            handle.seek((leaf - 1) * 4096)
            handle.write(os.urandom(4096))
        # the writer still has the store open, so nobody checkpoints its WAL meanwhile
        died = subprocess.run([sys.executable, "-c", RECOVER_AND_DIE_BEFORE_THE_SWAP, str(path)], timeout=60,
                              capture_output=True)
        assert died.returncode == 9
    finally:
        writer.kill()  # and then the writer dies too
        writer.wait(timeout=10)
    store = Store(path)
    store.check()
    pending = {entry.run_id for entry in store.outbox()}
    assert len(pending) >= 30 and not pending & {f"r{i}" for i in range(40, 60)}  # delivered stays delivered


TWO_THREADS_THEN_WAIT = """
import sys, threading
from afs_core.delivery.store import Store
from afs_core import EventType, NotificationEvent
store = Store(sys.argv[1])
def enqueue(title):
    store.enqueue(NotificationEvent(EventType.TRAINING_STARTED, title, "m"), ["c"])
enqueue("from the main thread")
worker = threading.Thread(target=enqueue, args=("from a second thread",))
worker.start(); worker.join()
print("ready", flush=True)
sys.stdin.readline()
enqueue("after the other process left")
print("written", flush=True)
sys.stdin.readline()
"""


def test_a_second_threads_connection_keeps_the_processs_hold_on_the_store(tmp_path):
    """Another process that opens and closes the store meanwhile must see that this one
    still uses it, and leave its WAL alone."""
    path = tmp_path / "afs.db"
    made = Store(path)
    made.close()
    writer = subprocess.Popen([sys.executable, "-c", TWO_THREADS_THEN_WAIT, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        subprocess.run([sys.executable, "-c", TITLES, str(path)], timeout=30, check=True, capture_output=True)
        assert os.path.exists(f"{path}-wal")
        writer.stdin.write("\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "written"
        seen = subprocess.run([sys.executable, "-c", TITLES, str(path)], capture_output=True, text=True,
                              timeout=30, check=True).stdout
        assert "after the other process left" in seen
    finally:
        writer.stdin.close()
        writer.wait(timeout=10)


def test_where_no_link_can_be_made_the_fresh_store_takes_the_name_itself(tmp_path, monkeypatch):
    path = tmp_path / "afs.db"
    filled(path, count=200, pending_from=100)
    leaf = first_leaf(path)
    with open(path, "r+b") as handle:
        handle.seek((leaf - 1) * 4096)
        handle.write(os.urandom(4096))

    def no_links(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "symlink", no_links)
    store = Store(path)
    assert store.check() is False
    assert not path.is_symlink() and Store(path).check() is True
    assert 90 <= store.pending(["c"]).total <= 100
    assert not list(tmp_path.glob("afs.db.r*")) and not list(tmp_path.glob("afs.db.link-*"))


def test_how_far_each_journal_was_taken_in_survives_a_recovery(tmp_path):
    """Otherwise the next process reads those journals again from the start and sends
    what was already delivered once more."""
    path = tmp_path / "afs.db"
    filled(path, count=200, pending_from=100)
    store = Store(path)
    store.ingest([], {"host-1234.jsonl": 8192})
    with store._read() as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    with open(path, "r+b") as handle:
        handle.seek((first_leaf(path) - 1) * 4096)
        handle.write(os.urandom(4096))
    finder = Store(path)
    assert finder.check() is False
    assert finder.journal_mark("host-1234.jsonl") == 8192


def damaged_store(tmp_path, page=first_leaf):
    path = tmp_path / "afs.db"
    filled(path, count=200, pending_from=100)
    number = page(path)
    with open(path, "r+b") as handle:
        handle.seek((number - 1) * 4096)
        handle.write(os.urandom(4096))
    return path


def events_root(path):
    """The page every use of the events table starts from."""
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'events'").fetchone()[0]
    finally:
        db.close()


def test_a_store_opened_only_to_be_read_is_never_replaced(tmp_path):
    path = damaged_store(tmp_path)
    reader = Store(path, read_only=True)  # afs history, say
    with pytest.raises(sqlite3.DatabaseError):
        for _ in range(3):
            reader.history(limit=1000)
            reader.outbox(limit=1000)
    assert not list(tmp_path.glob("afs.db.corrupt-*")) and not path.is_symlink()


def test_training_codes_own_calls_leave_replacing_a_damaged_store_to_the_engine(tmp_path):
    """A rank's failure or a monitor's state is written on the caller's thread: there a
    damaged store raises (the caller sends without it) instead of being salvaged."""
    path = damaged_store(tmp_path, page=events_root)
    store = Store(path)
    event = NotificationEvent(EventType.TRAINING_FAILED, "failed", "m")
    with pytest.raises(sqlite3.DatabaseError):
        store.enqueue_or_join(event, ["c"], dedup_key="k", since=0.0, not_before=0.0)
    assert not list(tmp_path.glob("afs.db.corrupt-*"))
    assert store.check() is False  # where the engine's thread finds it, it is replaced
