"""Claims: the oldest event's deliveries first, without sorting every one that waits."""

import json
import sqlite3
import time

from afs_core.delivery.store import FEW_DUE, PENDING, Store
from afs_core.events import EventType, NotificationEvent
from afs_core.results import DeliveryStatus

# The deliveries table as an older afs-core wrote it: no event time beside each delivery.
OLD_DELIVERIES = """
CREATE TABLE events (
    event_id TEXT PRIMARY KEY, created REAL NOT NULL, run_id TEXT, event_type TEXT NOT NULL,
    level TEXT NOT NULL, title TEXT NOT NULL, dedup_key TEXT, ranks TEXT, data TEXT NOT NULL
);
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL REFERENCES events(event_id) ON DELETE CASCADE,
    channel TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL, lease_owner TEXT, lease_until REAL, last_error TEXT,
    updated REAL NOT NULL, UNIQUE (event_id, channel)
);
CREATE INDEX deliveries_due ON deliveries(channel, status, next_attempt);
"""


def record(title, at):
    event = NotificationEvent(EventType.EPOCH_COMPLETED, title, "m", run_id="run-1")
    return {"event": event.to_dict(), "channels": ["c"], "at": at}


def test_a_claim_takes_the_oldest_events_first_whatever_order_they_were_stored_in(tmp_path):
    """A stopped process's journal goes in after newer events of a live one: its events
    are still sent first."""
    store = Store(tmp_path / "afs.db")
    now = time.time()
    store.ingest([record("newer", now - 10), record("newest", now - 5)])
    store.ingest([record("oldest", now - 60), record("older", now - 30)])  # an orphan's, taken later
    assert [c.event.title for c in store.claim("c", "me", limit=2)] == ["oldest", "older"]
    assert [c.event.title for c in store.claim("c", "me", limit=10)] == ["oldest", "older", "newer", "newest"]


def claim_plan(store, limit=5):
    """SQLite's plan for the statement a claim selects its deliveries with."""
    db = store._db()
    statements = []
    db.set_trace_callback(statements.append)
    claimed = store.claim("c", "me", limit=limit)
    db.set_trace_callback(None)
    (select,) = [s for s in statements if s.lstrip().startswith("SELECT d.id")]
    return " | ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + select)), claimed


def test_a_claim_from_a_backlog_walks_an_index_in_its_order_and_sorts_nothing(tmp_path):
    """Sorting every due delivery made each claim cost in proportion to the backlog:
    6 ms a claim with 10,000 waiting, so draining a backlog went quadratic."""
    store = Store(tmp_path / "afs.db")
    now = time.time()
    store.ingest([record(f"e{i}", now - 1000 + i) for i in range(FEW_DUE + 10)])
    plan, claimed = claim_plan(store)
    assert "deliveries_order" in plan and "TEMP B-TREE" not in plan, plan
    assert [c.event.title for c in claimed] == [f"e{i}" for i in range(5)]


def test_a_few_due_behind_many_waiting_retries_are_found_by_their_due_time(tmp_path):
    """After an outage most deliveries wait for their retry: walking past them all in
    event order cost more than sorting the few that are due."""
    store = Store(tmp_path / "afs.db")
    now = time.time()
    store.ingest([record(f"old{i}", now - 5000 + i) for i in range(2000)])
    retries = [(c.delivery_id, DeliveryStatus.PENDING, "503", now + 3600) for c in store.claim("c", "me", limit=2000)]
    assert len(store.finish_many(retries, "me")) == 2000
    store.ingest([record(f"new{i}", now - 10 + i) for i in range(8)])
    plan, claimed = claim_plan(store)
    assert "deliveries_due" in plan, plan
    assert [c.event.title for c in claimed] == [f"new{i}" for i in range(5)]


def test_a_store_written_before_deliveries_had_their_event_time_is_brought_up_to_date(tmp_path):
    path = tmp_path / "afs.db"
    with sqlite3.connect(path, isolation_level=None) as db:
        db.executescript(OLD_DELIVERIES)
        now = time.time()
        for event_id, title, created in (("b", "second", now - 50), ("a", "first", now - 90), ("c", "third", now - 10)):
            data = NotificationEvent(EventType.EPOCH_COMPLETED, title, "m", event_id=event_id).to_dict()
            db.execute("INSERT INTO events VALUES (?, ?, 'run-1', 'epoch_completed', 'info', ?, NULL, NULL, ?)",
                       (event_id, created, title, json.dumps(data)))
            db.execute("INSERT INTO deliveries (event_id, channel, status, next_attempt, updated)"
                       " VALUES (?, 'c', ?, ?, ?)", (event_id, PENDING, created, created))
    db.close()

    store = Store(path)
    times = dict(store._db().execute("SELECT event_id, created FROM deliveries").fetchall())
    assert times == {"a": now - 90, "b": now - 50, "c": now - 10}
    assert [c.event.title for c in store.claim("c", "me")] == ["first", "second", "third"]
    Store(path)  # opened again: already up to date, nothing to do
    columns = [row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(deliveries)")]
    assert columns.count("created") == 1


def old_schema(tmp_path):
    """An older afs-core's whole schema: the same tables, no event time on deliveries."""
    from afs_core.delivery.store import _SCHEMA

    assert "    created REAL,\n" in _SCHEMA
    return _SCHEMA.replace("    created REAL,\n", "", 1)


def old_insert(db, title, created):
    """What an older afs-core writes for an event: its row, and a delivery without time."""
    event = NotificationEvent(EventType.EPOCH_COMPLETED, title, "m", run_id="run-1")
    db.execute("INSERT INTO events (event_id, created, run_id, event_type, level, title, data)"
               " VALUES (?, ?, 'run-1', 'epoch_completed', 'info', ?, ?)",
               (event.event_id, created, title, json.dumps(event.to_dict())))
    db.execute("INSERT INTO deliveries (event_id, channel, status, next_attempt, updated) VALUES (?, 'c', ?, ?, ?)",
               (event.event_id, PENDING, created, created))


def test_deliveries_an_older_afs_core_writes_beside_this_one_keep_their_place(tmp_path):
    store = Store(tmp_path / "afs.db")
    now = time.time()
    store.ingest([record("first", now - 90), record("third", now - 10)])
    with sqlite3.connect(tmp_path / "afs.db", isolation_level=None) as older:
        old_insert(older, "second", now - 50)  # its statement names no time: the store fills it in
    older.close()
    assert [c.event.title for c in store.claim("c", "me")] == ["first", "second", "third"]


def test_a_store_an_older_afs_core_put_in_place_of_a_damaged_one_is_made_ready(tmp_path):
    """An older afs-core that finds the store damaged makes the fresh one with its own
    tables: this process, already running, goes on with it rather than failing."""
    from afs_core.delivery.store import _put_in_place

    path = tmp_path / "afs.db"
    store = Store(path)
    store.ingest([record("before", time.time() - 100)])
    fresh = tmp_path / f"afs.db.r{time.time_ns()}"
    with sqlite3.connect(fresh, isolation_level=None) as older:
        older.executescript(old_schema(tmp_path))
        old_insert(older, "salvaged", time.time() - 60)
    older.close()
    _put_in_place(fresh, path, path)  # in the damaged one's place, as a recovery puts it
    store.ingest([record("after", time.time() - 5)])
    assert [c.event.title for c in store.claim("c", "me")] == ["salvaged", "after"]


def test_a_store_with_no_room_to_give_its_deliveries_their_times_still_opens(tmp_path, monkeypatch, caplog):
    """Filling the column rewrites every delivery: on a nearly full disk the store opens
    all the same, sends oldest first by sorting, and is made ready at a later opening."""
    from afs_core.delivery import store as store_module

    path = tmp_path / "afs.db"
    now = time.time()
    with sqlite3.connect(path, isolation_level=None) as older:
        older.executescript(old_schema(tmp_path))
        for title, created in (("second", now - 50), ("first", now - 90)):
            old_insert(older, title, created)
    older.close()

    def no_room(db):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store_module, "fill_delivery_times", no_room)
    with caplog.at_level("WARNING", logger="afs.store"):
        store = Store(path)
    assert "could not be given their event times now" in caplog.text
    store.ingest([record("third", now - 10)])
    assert [c.event.title for c in store.claim("c", "me")] == ["first", "second", "third"]
    monkeypatch.undo()
    Store(path)  # room again
    index = sqlite3.connect(path).execute("SELECT 1 FROM sqlite_master WHERE name = 'deliveries_order'").fetchone()
    assert index == (1,)
