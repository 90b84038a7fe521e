"""Claims: the oldest event's deliveries first, without sorting every one that waits."""

import json
import sqlite3
import time

from afs_core.delivery.store import PENDING, Store
from afs_core.events import EventType, NotificationEvent

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


def test_a_claim_walks_an_index_in_its_order_and_sorts_nothing(tmp_path):
    """Sorting every due delivery made each claim cost in proportion to the backlog:
    6 ms a claim with 10,000 waiting, so draining a backlog went quadratic."""
    store = Store(tmp_path / "afs.db")
    store.ingest([record(f"e{i}", time.time() - 100 + i) for i in range(50)])
    db = store._db()
    statements = []
    db.set_trace_callback(statements.append)
    store.claim("c", "me", limit=5)
    db.set_trace_callback(None)
    (select,) = [s for s in statements if s.lstrip().startswith("SELECT d.id")]
    plan = " | ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + select))
    assert "deliveries_order" in plan and "TEMP B-TREE" not in plan, plan


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
