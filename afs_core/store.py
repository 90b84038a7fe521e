"""The local SQLite store: the outbox that makes "nothing is lost" true, and the history.

Every accepted event is written here before ``notify()`` returns, with one delivery
row per channel. Workers claim due deliveries with a lease, so processes sharing
the store (the ranks of a job, concurrent runs) never send the same delivery
twice while both live; a lease whose owner died is taken over. Deliveries end
delivered, filtered or dead (with the reason); history is pruned by age and count.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from afs_core.events import NotificationEvent

PENDING, DELIVERED, FILTERED, DEAD = "pending", "delivered", "filtered", "dead"
FINAL = (DELIVERED, FILTERED, DEAD)
DB_NAME = "afs.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    run_id TEXT,
    event_type TEXT NOT NULL,
    level TEXT NOT NULL,
    title TEXT NOT NULL,
    dedup_key TEXT,
    ranks TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_dedup ON events(dedup_key, created) WHERE dedup_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL REFERENCES events(event_id) ON DELETE CASCADE,
    channel TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    last_error TEXT,
    updated REAL NOT NULL,
    UNIQUE (event_id, channel)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(channel, status, next_attempt);
CREATE TABLE IF NOT EXISTS attempts (
    delivery_id INTEGER NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
    at REAL NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS attempts_delivery ON attempts(delivery_id);
CREATE TABLE IF NOT EXISTS run_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated REAL NOT NULL
);
"""


def default_home(env: dict[str, str] | os._Environ[str] | None = None) -> Path:
    """``AFS_HOME``, else the per-user data directory of this platform."""
    env = os.environ if env is None else env
    if env.get("AFS_HOME"):
        return Path(env["AFS_HOME"]).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "afs"
    if sys.platform.startswith("win"):
        return Path(env.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "afs"
    return Path(env.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "afs"


def open_store(env: dict[str, str] | None = None) -> Store:
    """The default store, or a ConfigurationError saying why AFS_HOME cannot hold it."""
    from afs_core.errors import ConfigurationError

    home = default_home(env)
    try:
        return Store(home / DB_NAME)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigurationError(f"AFS_HOME {str(home)!r} cannot hold the outbox: {exc}") from None


@attrs.frozen
class Claimed:
    """A delivery this process now holds the lease on."""

    delivery_id: int
    channel: str
    attempts: int
    created: float
    event: NotificationEvent


@attrs.frozen
class DeliveryRow:
    channel: str
    status: str
    attempts: int
    last_error: str | None
    next_attempt: float


@attrs.frozen
class HistoryEntry:
    event_id: str
    created: float
    run_id: str | None
    event_type: str
    level: str
    title: str
    deliveries: tuple[DeliveryRow, ...]


def owner_id() -> str:
    """Who holds a lease: host and pid, so a dead owner on this host is recognised."""
    return f"{os.uname().nodename if hasattr(os, 'uname') else 'host'}:{os.getpid()}:{threading.get_ident()}"


def _owner_is_dead(owner: str | None) -> bool:
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    here = os.uname().nodename if hasattr(os, "uname") else "host"
    if host != here or not pid_text.isdigit():
        return False  # another machine's process: wait for its lease to expire
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        return False
    return False


class Store:
    """The SQLite outbox and history at ``path`` (created 0600 in a 0700 directory)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._create()

    @classmethod
    def default(cls, env: dict[str, str] | None = None) -> Store:
        return cls(default_home(env) / DB_NAME)

    # -- connections ---------------------------------------------------------------

    def _create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Created with 0600 before SQLite opens it; SQLite gives its -wal and -shm
        # files the database file's permissions.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        self._db().executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():  # one connection per thread, never across fork
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db, self._local.pid = db, os.getpid()
        return db

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db())

    @contextlib.contextmanager
    def _quick(self) -> Iterator[None]:
        """A short busy timeout, for calls made on training code's thread."""
        db = self._db()
        db.execute("PRAGMA busy_timeout = 500")
        try:
            yield
        finally:
            db.execute("PRAGMA busy_timeout = 30000")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- writing -------------------------------------------------------------------

    def enqueue(
        self,
        event: NotificationEvent,
        channels: Sequence[str],
        *,
        not_before: float | None = None,
        dedup_key: str | None = None,
    ) -> None:
        """Persist ``event`` and one pending delivery per channel, in one transaction."""
        with self._transaction() as db:
            self._insert(db, event, channels, not_before=not_before, dedup_key=dedup_key)

    @staticmethod
    def _insert(db: sqlite3.Connection, event: NotificationEvent, channels: Sequence[str], *,
                not_before: float | None, dedup_key: str | None) -> None:
        now = time.time()
        data = json.dumps(event.to_dict(), separators=(",", ":"), default=str)
        ranks = str(event.source.rank) if dedup_key and event.source.rank is not None else None
        db.execute(
            "INSERT INTO events (event_id, created, run_id, event_type, level, title, dedup_key, ranks, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (event.event_id, now, event.run_id, event.event_type.value, event.level.value, event.title,
             dedup_key, ranks, data),
        )
        if channels:
            rows = ", ".join("(?, ?, ?, ?, ?)" for _ in channels)
            values = [v for channel in channels for v in (event.event_id, channel, PENDING, not_before or now, now)]
            db.execute(f"INSERT INTO deliveries (event_id, channel, status, next_attempt, updated) VALUES {rows}", values)

    def ingest(self, records: Sequence[dict[str, Any]]) -> set[str]:
        """Move journal records into the store (idempotent); returns the channels touched."""
        now = time.time()
        touched: set[str] = set()
        with self._transaction() as db:
            for record in records:
                event = record.get("event") or {}
                channels = [c for c in record.get("channels") or [] if isinstance(c, str)]
                try:
                    data = json.dumps(event, separators=(",", ":"), default=str)
                    db.execute(
                        "INSERT OR IGNORE INTO events (event_id, created, run_id, event_type, level, title, data)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (event["event_id"], record.get("at", now), event.get("run_id"), event["event_type"],
                         event["level"], event["title"], data),
                    )
                except (KeyError, TypeError, sqlite3.Error):
                    continue  # a damaged line: nothing to deliver from it
                not_before = record.get("not_before") or record.get("at", now)
                db.executemany(
                    "INSERT OR IGNORE INTO deliveries (event_id, channel, status, next_attempt, updated)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(event["event_id"], channel, PENDING, not_before, now) for channel in channels],
                )
                touched.update(channels)
        return touched

    def enqueue_or_join(
        self, event: NotificationEvent, channels: Sequence[str], *, dedup_key: str, since: float, not_before: float
    ) -> str | None:
        """In one transaction: join an event with ``dedup_key`` stored after ``since``
        (returning its id), or store this one (returning None). Ranks failing at the
        same moment cannot both store theirs. Waits at most half a second for the
        store (it runs on the caller's thread); raises sqlite3.Error beyond that."""
        with self._quick(), self._transaction() as db:
            joined = self._join(db, dedup_key, event.source.rank, since)
            if joined is not None:
                return joined
            self._insert(db, event, channels, not_before=not_before, dedup_key=dedup_key)
            return None

    @staticmethod
    def _join(db: sqlite3.Connection, dedup_key: str, rank: int | None, since: float) -> str | None:
        row = db.execute(
            "SELECT event_id, ranks FROM events WHERE dedup_key = ? AND created >= ? ORDER BY created LIMIT 1",
            (dedup_key, since),
        ).fetchone()
        if row is None:
            return None
        ranks = [r for r in (row[1] or "").split(",") if r]
        if rank is not None and str(rank) not in ranks:
            ranks.append(str(rank))
        db.execute("UPDATE events SET ranks = ? WHERE event_id = ?", (",".join(ranks), row[0]))
        return str(row[0])

    def claim(self, channel: str, owner: str, *, limit: int = 10, lease: float = 60.0) -> list[Claimed]:
        """Take the lease on up to ``limit`` due deliveries for ``channel``."""
        now = time.time()
        with self._transaction() as db:
            rows = db.execute(
                "SELECT d.id, d.attempts, d.lease_owner, d.lease_until, e.created, e.data, e.ranks"
                " FROM deliveries d JOIN events e ON e.event_id = d.event_id"
                " WHERE d.channel = ? AND d.status = ? AND d.next_attempt <= ?"
                " ORDER BY d.next_attempt, d.id LIMIT ?",
                (channel, PENDING, now, limit * 4),
            ).fetchall()
            claimed: list[Claimed] = []
            for delivery_id, attempts, lease_owner, lease_until, created, data, ranks in rows:
                held = lease_until is not None and lease_until > now and lease_owner != owner
                if held and not _owner_is_dead(lease_owner):
                    continue
                db.execute(
                    "UPDATE deliveries SET lease_owner = ?, lease_until = ?, updated = ? WHERE id = ?",
                    (owner, now + lease, now, delivery_id),
                )
                try:
                    event = NotificationEvent.from_dict(json.loads(data))
                except Exception as exc:  # written by another version, or damaged
                    db.execute(
                        "UPDATE deliveries SET status = ?, last_error = ?, lease_owner = NULL, lease_until = NULL,"
                        " updated = ? WHERE id = ?",
                        (DEAD, f"the stored event could not be read: {type(exc).__name__}: {exc}"[:500], now, delivery_id),
                    )
                    continue
                if ranks and "," in ranks:
                    event = event.evolve(context={**event.context, "ranks": ranks.replace(",", ", ")})
                claimed.append(Claimed(delivery_id, channel, attempts, created, event))
                if len(claimed) >= limit:
                    break
            return claimed

    def finish(
        self,
        delivery_id: int,
        owner: str,
        status: str,
        *,
        error: str | None = None,
        next_attempt: float | None = None,
    ) -> bool:
        """Record an attempt's outcome; ``status`` PENDING with ``next_attempt`` schedules a
        retry. Returns False when the lease was lost meanwhile (nothing is changed)."""
        return self.finish_many([(delivery_id, status, error, next_attempt)], owner)[0]

    def finish_many(self, outcomes: Sequence[tuple[int, str, str | None, float | None]], owner: str) -> list[bool]:
        """:meth:`finish` for several deliveries in one transaction:
        (delivery id, status, error, next attempt) each; True where the lease held."""
        now = time.time()
        done = []
        with self._transaction() as db:
            for delivery_id, status, error, next_attempt in outcomes:
                cursor = db.execute(
                    "UPDATE deliveries SET status = ?, attempts = attempts + 1, next_attempt = ?, last_error = ?,"
                    " lease_owner = NULL, lease_until = NULL, updated = ? WHERE id = ? AND lease_owner = ?",
                    (status, next_attempt if next_attempt is not None else now, error, now, delivery_id, owner),
                )
                held = cursor.rowcount == 1
                if held:
                    db.execute(
                        "INSERT INTO attempts (delivery_id, at, outcome, error) VALUES (?, ?, ?, ?)",
                        (delivery_id, now, status if status != PENDING else "retry", error),
                    )
                done.append(held)
        return done

    def extend(self, delivery_id: int, owner: str, lease: float) -> bool:
        """Renew this owner's lease; False when it was lost (someone else may send it)."""
        now = time.time()
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE deliveries SET lease_until = ? WHERE id = ? AND lease_owner = ? AND status = ?",
                (now + lease, delivery_id, owner, PENDING),
            )
            return cursor.rowcount == 1

    def make_due(self, channels: Sequence[str]) -> int:
        """Pending deliveries of these channels become due now (``afs outbox flush``)."""
        now = time.time()
        marks = ",".join("?" for _ in channels)
        with self._transaction() as db:
            return db.execute(
                f"UPDATE deliveries SET next_attempt = ? WHERE status = ? AND next_attempt > ? AND channel IN ({marks})",
                (now, PENDING, now, *channels),
            ).rowcount

    def release(self, delivery_id: int, owner: str) -> None:
        """Give a lease back without an attempt (the worker is stopping)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?",
                (delivery_id, owner),
            )

    def requeue(self, delivery_id: int) -> bool:
        """Make a dead delivery pending again (``afs outbox retry``)."""
        now = time.time()
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE deliveries SET status = ?, next_attempt = ?, attempts = 0, updated = ? WHERE id = ? AND status = ?",
                (PENDING, now, now, delivery_id, DEAD),
            )
            return cursor.rowcount == 1

    def prune(self, *, max_age: float = 30 * 86400, max_events: int = 10_000) -> int:
        """Forget old history: events older than ``max_age`` seconds, and beyond the newest
        ``max_events``, whose deliveries are all finished. Returns how many went."""
        cutoff = time.time() - max_age
        finished = "NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.event_id AND d.status = 'pending')"
        with self._transaction() as db:
            removed = db.execute(f"DELETE FROM events WHERE created < ? AND {finished}", (cutoff,)).rowcount
            removed += db.execute(
                f"DELETE FROM events WHERE {finished} AND event_id NOT IN"
                " (SELECT event_id FROM events ORDER BY rowid DESC LIMIT ?)",
                (max_events,),
            ).rowcount
        return removed

    def set_state(self, key: str, value: str) -> None:
        """Remember a small value across processes (a monitor's state, keyed by run).
        Called from training code: waits at most half a second for the store."""
        with self._quick(), self._transaction() as db:
            db.execute(
                "INSERT INTO run_state (key, value, updated) VALUES (?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                (key, value, time.time()),
            )

    def get_state(self, key: str) -> str | None:
        row = self._db().execute("SELECT value FROM run_state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # -- reading -------------------------------------------------------------------

    def next_due(self, channel: str) -> float | None:
        row = self._db().execute(
            "SELECT MIN(next_attempt) FROM deliveries WHERE channel = ? AND status = ?", (channel, PENDING)
        ).fetchone()
        return row[0] if row and row[0] is not None else None

    def statuses(self, event_id: str) -> dict[str, DeliveryRow]:
        rows = self._db().execute(
            "SELECT channel, status, attempts, last_error, next_attempt FROM deliveries WHERE event_id = ?",
            (event_id,),
        ).fetchall()
        return {row[0]: DeliveryRow(*row) for row in rows}

    def counts(self) -> dict[str, dict[str, int]]:
        """Per channel: how many deliveries are pending and dead."""
        counts: dict[str, dict[str, int]] = {}
        for channel, status, number in self._db().execute(
            "SELECT channel, status, COUNT(*) FROM deliveries WHERE status IN (?, ?) GROUP BY channel, status",
            (PENDING, DEAD),
        ):
            counts.setdefault(channel, {PENDING: 0, DEAD: 0})[status] = number
        return counts

    def history(self, *, run_id: str | None = None, limit: int = 50) -> list[HistoryEntry]:
        query = "SELECT event_id, created, run_id, event_type, level, title FROM events"
        args: list[Any] = []
        if run_id is not None:
            query += " WHERE run_id = ?"
            args.append(run_id)
        query += " ORDER BY rowid DESC LIMIT ?"
        args.append(limit)
        entries = []
        db = self._db()
        for event_id, created, run, event_type, level, title in db.execute(query, args).fetchall():
            rows = db.execute(
                "SELECT channel, status, attempts, last_error, next_attempt FROM deliveries WHERE event_id = ? ORDER BY channel",
                (event_id,),
            ).fetchall()
            entries.append(HistoryEntry(event_id, created, run, event_type, level, title, tuple(DeliveryRow(*r) for r in rows)))
        return entries

    def outbox(self, statuses: Iterable[str] = (PENDING, DEAD), limit: int = 200) -> list[tuple[int, str, str, str, int, str | None]]:
        """(delivery id, channel, status, title, attempts, last error) for pending and dead deliveries."""
        wanted = tuple(statuses)
        marks = ",".join("?" for _ in wanted)
        return self._db().execute(
            f"SELECT d.id, d.channel, d.status, e.title, d.attempts, d.last_error FROM deliveries d"
            f" JOIN events e ON e.event_id = d.event_id WHERE d.status IN ({marks}) ORDER BY d.id LIMIT ?",
            (*wanted, limit),
        ).fetchall()


class _Transaction:
    """``with store._transaction() as db``: BEGIN IMMEDIATE ... COMMIT or ROLLBACK.

    Every transaction here writes; taking the write lock up front lets SQLite's
    busy timeout wait for another writer, where a read-then-write transaction
    would fail at once with a stale snapshot.
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
