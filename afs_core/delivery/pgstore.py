"""The outbox and history on PostgreSQL, shared by every machine of a team (``AFS_STORE_URL``).

The same public methods as :class:`~afs_core.delivery.store.Store`, so the engine,
the ``afs`` command and the dashboard do not know which they have. What changes is
what one database makes possible across machines:

- workers claim due deliveries with ``SELECT ... FOR UPDATE SKIP LOCKED`` and leases
  on the server's clock, so each delivery is sent once whichever host claims it; a
  lease whose owner died anywhere is taken over when it expires (``AFS_LEASE_SECONDS``);
- ranks' failures from many hosts join one event (a lock per merge key), whose
  message names the ranks and the hosts;
- a channel's rate holds for every process sending to the same target (a token
  bucket row per target, updated on the server's clock).

A server that cannot be reached raises :class:`~afs_core.delivery.store.StoreUnavailable`,
which callers treat like SQLite's "busy": accepted events wait in the journal and go
in, in order, once it answers; connections are made again by themselves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from afs_core.clock import SYSTEM_CLOCK, Clock
from afs_core.delivery import metrics
from afs_core.delivery.location import StoreLocation
from afs_core.delivery.metrics import MetricPoint, MetricRow
from afs_core.delivery.store import (
    _RUN_FACT_EVENTS,
    _WORDS,
    DEAD,
    PENDING,
    PRUNED_KEY,
    Attempt,
    ChannelCounts,
    ChannelFailure,
    Claimed,
    DeliveryDetail,
    DeliveryRow,
    HistoryEntry,
    OutboxEntry,
    PendingSummary,
    RunEvent,
    RunSummary,
    StoreError,
    StoreUnavailable,
    _merge_of,
    _owner_is_dead,
    _run_summary,
    _status,
    prune_record,
    pruned_within,
    strict_json,
)
from afs_core.events import NotificationEvent
from afs_core.results import DeliveryStatus

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger("afs.store")

SCHEMES = ("postgresql", "postgres")
LEASE_SECONDS = 30.0  # a dead host's deliveries are taken over this long after its last renewal
RECONNECT_SECONDS = 0.5  # after a failed connection, calls fail at once for this long
QUICK_RECONNECT_SECONDS = 30.0  # ... and calls on training code's thread (run state) for this long
CONNECT_TIMEOUT = 5  # seconds (libpq's connect_timeout), unless the URL or PGCONNECT_TIMEOUT says otherwise
LOCK_TIMEOUT_MS = 2_000  # a lock held elsewhere longer than this: "busy", tried again (unless options= says)
STATEMENT_TIMEOUT_MS = 60_000  # ... and a statement running longer than this
# A server gone in the middle of a query (a network cut) is noticed within about half a
# minute rather than the operating system's two hours; what the URL sets wins.
_CONNECTION_DEFAULTS = {"keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
                        "tcp_user_timeout": 30_000}
_NOW = "extract(epoch from clock_timestamp())"  # the server's clock, in the store's unit (Unix seconds)
_MIGRATION_LOCK = 0x41F5_0001  # pg_advisory_xact_lock key: one process migrates at a time
_PRUNE_LOCK = 0x41F5_0002  # ... and one prunes: every process of every host prunes hourly
#: A run_state value written, or written over: (key, value, updated).
_PUT_STATE = ("INSERT INTO run_state (key, value, updated) VALUES (%s, %s, %s) ON CONFLICT (key)"
              " DO UPDATE SET value = excluded.value, updated = excluded.updated")

# Each step takes the schema from the version before it; applied in order, each in its
# own transaction with its version, never edited once released.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE events (
        seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
        event_id TEXT PRIMARY KEY,
        created DOUBLE PRECISION NOT NULL,
        run_id TEXT,
        event_type TEXT NOT NULL,
        level TEXT NOT NULL,
        title TEXT NOT NULL,
        dedup_key TEXT,
        ranks TEXT,
        hosts TEXT,
        model_name TEXT,
        host TEXT,
        rank INTEGER,
        cost DOUBLE PRECISION,
        duration DOUBLE PRECISION,
        data TEXT NOT NULL
    );
    CREATE INDEX events_dedup ON events (dedup_key, created) WHERE dedup_key IS NOT NULL;
    CREATE INDEX events_run ON events (run_id, created);
    CREATE INDEX events_run_type ON events (run_id, event_type, created);
    CREATE TABLE deliveries (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        event_id TEXT NOT NULL REFERENCES events (event_id) ON DELETE CASCADE,
        channel TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt DOUBLE PRECISION NOT NULL,
        lease_owner TEXT,
        lease_until DOUBLE PRECISION,
        last_error TEXT,
        updated DOUBLE PRECISION NOT NULL,
        UNIQUE (event_id, channel)
    );
    CREATE INDEX deliveries_due ON deliveries (channel, status, next_attempt);
    CREATE TABLE attempts (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        delivery_id BIGINT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
        at DOUBLE PRECISION NOT NULL,
        outcome TEXT NOT NULL,
        error TEXT
    );
    CREATE INDEX attempts_delivery ON attempts (delivery_id);
    CREATE INDEX attempts_failures ON attempts (at) WHERE outcome IN ('retry', 'dead');
    CREATE TABLE journal_marks (
        name TEXT PRIMARY KEY,
        position BIGINT NOT NULL,
        updated DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE run_state (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE metrics (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        source TEXT NOT NULL,
        run_id TEXT,
        model_name TEXT,
        name TEXT NOT NULL,
        step BIGINT,
        value DOUBLE PRECISION,
        at DOUBLE PRECISION NOT NULL,
        UNIQUE (source, name)
    );
    CREATE INDEX metrics_series ON metrics (run_id, name, at);
    CREATE INDEX metrics_age ON metrics (at);
    CREATE TABLE pacing (
        target TEXT PRIMARY KEY,
        tokens DOUBLE PRECISION NOT NULL,
        stamp DOUBLE PRECISION NOT NULL
    );
    """,
    # 2: repeats held back by any process of a run, counted once for the digest.
    """
    CREATE TABLE throttle (
        channel TEXT NOT NULL,
        event_type TEXT NOT NULL,
        run_id TEXT NOT NULL,
        last_sent DOUBLE PRECISION NOT NULL,
        held INTEGER NOT NULL DEFAULT 0,
        told INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (channel, event_type, run_id)
    );
    """,
    # 3: each delivery carries its event's time, so a claim walks an index in the order
    # it sends (oldest event first) and stops at its limit, instead of sorting the backlog.
    # A process of an older afs-core still running writes deliveries without it: the
    # trigger gives them their time all the same.
    """
    ALTER TABLE deliveries ADD COLUMN created DOUBLE PRECISION;
    UPDATE deliveries d SET created = e.created FROM events e WHERE e.event_id = d.event_id;
    CREATE INDEX deliveries_order ON deliveries (channel, status, created, id);
    CREATE FUNCTION afs_delivery_created() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.created IS NULL THEN
            SELECT e.created INTO NEW.created FROM events e WHERE e.event_id = NEW.event_id;
        END IF;
        RETURN NEW;
    END
    $$;
    CREATE TRIGGER deliveries_created BEFORE INSERT ON deliveries
        FOR EACH ROW EXECUTE PROCEDURE afs_delivery_created();
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def is_store_url(url: str) -> bool:
    return urllib.parse.urlsplit(url.strip()).scheme.lower() in SCHEMES


def redact_url(url: str) -> str:
    """``url`` without its password (``user:password@`` or libpq's ``?password=``), for
    logs and ``afs store info``."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError:
        return "a postgresql:// URL that cannot be read"
    if parts.query:
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if any(name.lower() == "password" for name, _ in query):
            hidden = [(name, "***" if name.lower() == "password" else value) for name, value in query]
            parts = parts._replace(query=urllib.parse.urlencode(hidden, safe="*"))
    if parts.password is None:
        return urllib.parse.urlunsplit(parts)
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def check_url(url: str) -> None:
    """Raise ValueError saying what is wrong with ``url`` (never its password)."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme.lower() not in SCHEMES:
        raise ValueError(f"{redact_url(url)!r} is not a postgresql:// URL")
    try:
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        raise ValueError(f"{redact_url(url)!r} has a port that is not a number") from None
    path = parts.path.lstrip("/")
    if "/" in path:
        raise ValueError(f"{redact_url(url)!r} names more than a database in its path")


def _event_columns(event: Mapping[str, Any]) -> tuple[Any, ...]:
    """What the dashboard reads of an event, as columns: model, host, rank, cost, duration."""
    found_source, found_context = event.get("source"), event.get("context")
    source: Mapping[str, Any] = found_source if isinstance(found_source, Mapping) else {}
    context: Mapping[str, Any] = found_context if isinstance(found_context, Mapping) else {}
    rank = source.get("rank")
    cost, duration = event.get("cost"), context.get("duration")
    return (event.get("model_name") if isinstance(event.get("model_name"), str) else None,
            str(source["host"]) if source.get("host") else None,
            rank if isinstance(rank, int) and not isinstance(rank, bool) else None,
            float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None,
            float(duration) if isinstance(duration, (int, float)) and not isinstance(duration, bool) else None)


class PostgresStore:
    """The outbox and history in the PostgreSQL database at ``url``.

    :param home: where this host keeps its journal (``AFS_HOME``'s place); the
        journal stays on local disk so ``notify()`` never waits on the network.
    :param lease_seconds: how long a claim holds without renewal (the engine renews it
        while a send runs): the time from a host's death to its deliveries going out.
    """

    #: Writes on the caller's thread would wait on the network: the engine sends even a
    #: rank's failure through the journal.
    quick_writes = False
    read_only = False
    path: Path | None = None

    def __init__(self, url: str, *, home: Path, clock: Clock = SYSTEM_CLOCK,
                 lease_seconds: float | None = None) -> None:
        check_url(url)
        self.url = url.strip()
        # Every host's times (created, due, the merge window, the prune cutoff) are the
        # server's: a host whose clock is off neither delays nor prunes the others' events.
        self.clock: Clock = ServerClock() if clock is SYSTEM_CLOCK else clock
        self.lease_seconds = lease_seconds or LEASE_SECONDS
        self.journal_directory: Path | None = home / "journal"
        self.location = StoreLocation(None, explicit=True)
        self._local = threading.local()  # the caller's patience, per thread
        # One connection per process, one transaction at a time: a 64-node job's hundreds
        # of processes must not each open a connection per thread (max_connections).
        self._conn: psycopg.Connection[Any] | None = None
        self._use = threading.RLock()
        self._pid = os.getpid()
        self._failed_at = float("-inf")
        self._failure = ""
        # Brought up to date by the first connection (on the engine's threads, never at
        # from_env(): a server down at start-up must not hold the training script).
        self._schema_checked = False

    @property
    def durable(self) -> bool:
        return True

    @property
    def backend(self) -> str:
        return f"postgresql ({redact_url(self.url)})"

    # -- connections ---------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        patience = getattr(self._local, "patience", None)
        if time.monotonic() - self._failed_at < (QUICK_RECONNECT_SECONDS if patience else RECONNECT_SECONDS):
            raise StoreUnavailable(self._failure)
        params = urllib.parse.parse_qs(urllib.parse.urlsplit(self.url).query)
        extra: dict[str, Any] = {"application_name": "afs"}
        extra.update((name, value) for name, value in _CONNECTION_DEFAULTS.items() if name not in params)
        if "connect_timeout" not in params and (patience or not os.environ.get("PGCONNECT_TIMEOUT")):
            extra["connect_timeout"] = max(2, math.ceil(patience)) if patience else CONNECT_TIMEOUT
        if "options" not in params and not os.environ.get("PGOPTIONS"):
            # A lock another session holds (or a query that hangs) must not hold a worker, a
            # command or training code's thread for as long as it lasts: it is "busy".
            extra["options"] = f"-c lock_timeout={LOCK_TIMEOUT_MS} -c statement_timeout={STATEMENT_TIMEOUT_MS}"
        try:
            db = psycopg.connect(self.url, autocommit=True, **extra)
            _text_without_nul(db)
            if isinstance(self.clock, ServerClock):
                self.clock.set_from(db)
        except psycopg.Error as exc:
            self._failed_at = time.monotonic()
            self._failure = f"the database {redact_url(self.url)} cannot be reached: {_short(exc)}"
            raise StoreUnavailable(self._failure) from None
        self._failed_at = float("-inf")
        return db

    def _db(self) -> psycopg.Connection[Any]:
        """This process's connection (made again when lost); called holding ``_use``."""
        db = self._conn
        if db is None or db.closed:
            db = self._conn = self._connect()
        if not self._schema_checked:
            self._ensure_schema(db)
        return db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor[Any]]:
        """One transaction on this process's connection, one at a time; a lost
        connection is dropped (the next call connects again) and said as StoreUnavailable.
        A caller with patience waits for the connection no longer than that."""
        import psycopg

        if self._pid != os.getpid():  # a forked child: the parent's connection and lock are not its own
            self._conn, self._use, self._pid = None, threading.RLock(), os.getpid()
        patience = getattr(self._local, "patience", None)
        if not self._use.acquire(timeout=-1 if patience is None else max(patience, 0.0)):
            raise StoreUnavailable("the store's connection stayed busy with this process's other work")
        try:
            try:
                db = self._db()
            except psycopg.Error as exc:  # the schema could not be checked or brought up to date
                raise _refused(exc, "the store's schema could not be checked") from None
            try:
                with db.transaction(), db.cursor() as cursor:
                    if patience is not None:  # the caller's thread waits on a lock no longer than that
                        cursor.execute(f"SET LOCAL lock_timeout = {max(int(patience * 1000), 1)}")
                    yield cursor
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if not _passing(exc):
                    self._drop(db)
                raise StoreUnavailable(f"the database did not answer: {_short(exc)}") from None
            except psycopg.Error as exc:
                raise _refused(exc, "the database refused") from None
        finally:
            self._use.release()

    _read = _transaction

    def _drop(self, db: psycopg.Connection[Any]) -> None:
        with contextlib.suppress(Exception):
            db.close()
        if self._conn is db:
            self._conn = None

    @contextlib.contextmanager
    def patience(self, seconds: float) -> Iterator[None]:
        """Calls inside the block are the caller's (training code's, a command's): a
        connection gives up after about ``seconds`` (libpq waits 2 s at least), and none
        is tried for half a minute after one failed (the engine's threads keep trying)."""
        before = getattr(self._local, "patience", None)
        self._local.patience = seconds
        try:
            yield
        finally:
            self._local.patience = before

    def close(self) -> None:
        with self._use:
            if self._conn is not None and self._pid == os.getpid():
                self._drop(self._conn)

    def check(self) -> bool:
        """PostgreSQL keeps its own files whole; nothing to check here."""
        return True

    # -- schema --------------------------------------------------------------------------

    def _ensure_schema(self, db: psycopg.Connection[Any]) -> None:
        version = self._version(db)
        if version > SCHEMA_VERSION:
            raise StoreError(f"the database's schema is version {version}, newer than this afs-core knows "
                             f"({SCHEMA_VERSION}): upgrade afs-core on this machine")
        if version < SCHEMA_VERSION:
            self._apply(db)
        self._schema_checked = True

    @staticmethod
    def _version(db: psycopg.Connection[Any]) -> int:
        row = db.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
        if not row or not row[0]:
            return 0
        found = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
        return int(found[0]) if found else 0

    def _apply(self, db: psycopg.Connection[Any]) -> list[int]:
        applied = []
        with db.transaction():
            db.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")  # processes starting together
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
                       " applied DOUBLE PRECISION NOT NULL)")
            current = self._version(db)
            for number, step in enumerate(MIGRATIONS, start=1):
                if number <= current:
                    continue
                db.execute(step.encode())
                db.execute("INSERT INTO schema_version (version, applied) VALUES (%s, %s)", (number, time.time()))
                applied.append(number)
        if applied:
            logger.info("afs: the store's schema in %s is now version %d", redact_url(self.url), applied[-1])
        return applied

    def migrate(self) -> list[int]:
        """Bring the database's schema to this version (``afs store migrate``); the
        versions applied now (none when it was current)."""
        import psycopg

        db = self._connect()
        try:
            applied = self._apply(db)
            if self._version(db) > SCHEMA_VERSION:
                raise StoreError(f"the database's schema is newer than this afs-core knows ({SCHEMA_VERSION})")
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StoreUnavailable(f"the database did not answer: {_short(exc)}") from None
        except psycopg.Error as exc:
            raise StoreError(f"the database refused: {_short(exc)}") from None
        finally:
            db.close()
        self._schema_checked = True
        return applied

    def info(self) -> dict[str, Any]:
        """Backend, schema version and how much is stored (``afs store info``)."""
        with self._read() as db:
            version = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
            counts = {table: int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # type: ignore[index]
                      for table in ("events", "deliveries", "attempts", "metrics", "run_state")}
            pending = db.execute("SELECT COUNT(*) FROM deliveries WHERE status = %s", (PENDING,)).fetchone()
        return {"backend": "postgresql", "url": redact_url(self.url), "schema_version": int(version[0]) if version
                else 0, "pending": int(pending[0]) if pending else 0, "counts": counts}

    # -- writing ---------------------------------------------------------------------------

    def _put(self, db: psycopg.Cursor[Any], event: Mapping[str, Any], channels: Iterable[str], *, created: float,
             not_before: float, updated: float, dedup_key: str | None = None, ranks: str | None = None,
             hosts: str | None = None, attempts: Mapping[str, int] | None = None) -> None:
        _record(db, metrics.rows_from_event(event, created))
        event = _with_loss_curve(db, event)
        data = strict_json(event)  # NaN and Infinity as text, as the SQLite store writes them
        db.execute(
            "INSERT INTO events (event_id, created, run_id, event_type, level, title, dedup_key, ranks, hosts,"
            " model_name, host, rank, cost, duration, data) VALUES"
            " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING",
            (event["event_id"], created, event.get("run_id"), event["event_type"], event["level"], event["title"],
             dedup_key, ranks, hosts, *_event_columns(event), data),
        )
        db.executemany(
            "INSERT INTO deliveries (event_id, channel, status, next_attempt, attempts, updated, created)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (event_id, channel) DO NOTHING",
            [(event["event_id"], channel, PENDING, not_before, int((attempts or {}).get(channel) or 0), updated,
              created) for channel in channels],
        )

    def enqueue(self, event: NotificationEvent, channels: Sequence[str], *, not_before: float | None = None,
                dedup_key: str | None = None) -> None:
        now = self.clock.time()
        ranks = str(event.source.rank) if dedup_key and event.source.rank is not None else None
        with self._transaction() as db:
            self._put(db, event.to_dict(), channels, created=now, not_before=not_before or now, updated=now,
                      dedup_key=dedup_key, ranks=ranks, hosts=event.source.host if dedup_key else None)

    def ingest(self, records: Sequence[Mapping[str, Any]], marks: Mapping[str, int] | None = None,
               joined: dict[str, str] | None = None, *, metric_rows: Iterable[MetricRow] = ()) -> set[str]:
        """Move journal records into the database, as :meth:`Store.ingest` does (idempotent;
        ranks' failures joined across hosts; ``marks`` kept per host)."""
        touched: set[str] = set()
        if joined is not None:
            joined.clear()
        rows = list(metric_rows)
        with self._transaction() as db:
            now = self.clock.time()  # connected: the server's time
            _record(db, rows)
            if marks:
                db.executemany(
                    "INSERT INTO journal_marks (name, position, updated) VALUES (%s, %s, %s) ON CONFLICT (name)"
                    " DO UPDATE SET position = GREATEST(journal_marks.position, excluded.position),"
                    " updated = excluded.updated",
                    [(_mark(name), offset, now) for name, offset in marks.items()])
            # Ranks on other hosts may be taking in the same failure now: one merge key at a
            # time, locked in one order so two batches never wait on each other.
            keys = sorted({key for key in (_merge_of(r)[0] for r in records) if key is not None})
            for locked in keys:
                db.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (locked,))
            for record in records:
                try:
                    event = record.get("event") or {}
                    channels = [c for c in record.get("channels") or [] if isinstance(c, str)]
                    at = float(record.get("at", now))
                    # Stamped before this host knew the server's time (or by a clock ahead of
                    # it): taken as accepted now, its due time and merge window moved along.
                    shift = now - at if record.get("unaligned") or at > now + 1.0 else 0.0
                    at += shift
                    attempts = record.get("attempts")
                    for field in ("event_id", "event_type", "level", "title"):
                        if not isinstance(event[field], str):
                            raise TypeError(field)
                    key, since, rank = _merge_of(record)
                    since += shift
                    host = _host_of(event)
                    if key is not None and db.execute("SELECT 1 FROM events WHERE event_id = %s",
                                                      (event["event_id"],)).fetchone() is None:
                        into = _join(db, key, rank, host, since)
                        if into is not None:
                            if joined is not None:
                                joined[event["event_id"]] = into
                            continue
                    self._put(db, event, channels, created=at,
                              not_before=float(record.get("not_before") or at - shift) + shift,
                              updated=now, attempts=attempts if isinstance(attempts, dict) else None, dedup_key=key,
                              ranks=None if key is None or rank is None else str(rank),
                              hosts=None if key is None else host)
                except (KeyError, TypeError, ValueError, AttributeError):
                    continue  # a damaged line: nothing to deliver from it
                touched.update(channels)
        return touched

    def enqueue_or_join(self, event: NotificationEvent, channels: Sequence[str], *, dedup_key: str, since: float,
                        not_before: float) -> str | None:
        now = self.clock.time()
        with self._transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (dedup_key,))
            into = _join(db, dedup_key, event.source.rank, event.source.host or None, since)
            if into is not None:
                return into
            self._put(db, event.to_dict(), channels, created=now, not_before=not_before, updated=now,
                      dedup_key=dedup_key, ranks=None if event.source.rank is None else str(event.source.rank),
                      hosts=event.source.host or None)
            return None

    def claim(self, channel: str, owner: str, *, limit: int = 10, lease: float = 60.0,
              skip: Iterable[int] = ()) -> list[Claimed]:
        """Lease up to ``limit`` due deliveries of ``channel``: rows another worker is
        claiming now are skipped, not waited for; leases run on the server's clock."""
        from afs_core.source import host_name

        skipped = list(skip)
        base = ("SELECT d.id, d.attempts, d.lease_owner, e.created, e.data, e.ranks, e.hosts"
                " FROM deliveries d JOIN events e ON e.event_id = d.event_id"
                f" WHERE d.channel = %s AND d.status = %s AND d.next_attempt <= {_NOW} AND NOT d.id = ANY(%s)")
        with self._transaction() as db:
            rows = db.execute(
                base + f" AND (d.lease_until IS NULL OR d.lease_until <= {_NOW} OR d.lease_owner = %s)"
                " ORDER BY d.created, d.id LIMIT %s FOR UPDATE OF d SKIP LOCKED",
                (channel, PENDING, skipped, owner, limit)).fetchall()
            if len(rows) < limit:
                # Leases of this host's processes that died: taken over at once, not at expiry.
                held = db.execute(
                    base + f" AND d.lease_until > {_NOW} AND d.lease_owner <> %s AND d.lease_owner LIKE %s"
                    " ORDER BY d.created, d.id LIMIT %s FOR UPDATE OF d SKIP LOCKED",
                    (channel, PENDING, skipped, owner, _like_prefix(host_name()), limit)).fetchall()
                rows += [row for row in held if _owner_is_dead(row[2])][: limit - len(rows)]
            if not rows:
                return []
            db.execute(f"UPDATE deliveries SET lease_owner = %s, lease_until = {_NOW} + %s, updated = %s"
                       " WHERE id = ANY(%s)", (owner, lease, self.clock.time(), [row[0] for row in rows]))
            claimed: list[Claimed] = []
            for delivery_id, attempts, _, created, data, ranks, hosts in rows:
                try:
                    event = NotificationEvent.from_dict(json.loads(data))
                except Exception as exc:  # written by another version, or damaged
                    db.execute("UPDATE deliveries SET status = %s, last_error = %s, lease_owner = NULL,"
                               " lease_until = NULL, updated = %s WHERE id = %s",
                               (DEAD, f"the stored event could not be read: {type(exc).__name__}: {exc}"[:500],
                                self.clock.time(), delivery_id))
                    continue
                claimed.append(Claimed(delivery_id, channel, attempts, created, _merged(event, ranks, hosts)))
        claimed.sort(key=lambda item: (item.created, item.delivery_id))
        return claimed

    def finish_many(self, outcomes: Sequence[tuple[int, DeliveryStatus, str | None, float | None]],
                    owner: str) -> list[bool]:
        now = self.clock.time()
        done = []
        with self._transaction() as db:
            for delivery_id, status, error, next_attempt in outcomes:
                row = db.execute(
                    "WITH held AS (UPDATE deliveries SET status = %s, attempts = attempts + 1, next_attempt = %s,"
                    " last_error = %s, lease_owner = NULL, lease_until = NULL, updated = %s"
                    " WHERE id = %s AND lease_owner = %s RETURNING id)"
                    " INSERT INTO attempts (delivery_id, at, outcome, error) SELECT id, %s, %s, %s FROM held"
                    " RETURNING delivery_id",
                    (_WORDS[status], next_attempt if next_attempt is not None else now, error, now, delivery_id,
                     owner, now, "retry" if status is DeliveryStatus.PENDING else _WORDS[status], error),
                ).fetchone()
                done.append(row is not None)
        return done

    def extend(self, delivery_ids: Sequence[int], owner: str, lease: float) -> set[int]:
        if not delivery_ids:
            return set()
        with self._transaction() as db:
            rows = db.execute(
                f"UPDATE deliveries SET lease_until = {_NOW} + %s WHERE id = ANY(%s) AND lease_owner = %s"
                " AND status = %s RETURNING id", (lease, list(delivery_ids), owner, PENDING)).fetchall()
        return {int(row[0]) for row in rows}

    def release(self, delivery_id: int, owner: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE id = %s"
                       " AND lease_owner = %s", (delivery_id, owner))

    def hand_over(self) -> list[dict[str, Any]]:
        """Nothing moves out of a shared database: it is never the store in memory."""
        return []

    def make_due(self, channels: Sequence[str]) -> int:
        now = self.clock.time()
        with self._transaction() as db:
            return db.execute("UPDATE deliveries SET next_attempt = %s WHERE status = %s AND next_attempt > %s"
                              " AND channel = ANY(%s)", (now, PENDING, now, list(channels))).rowcount

    def requeue(self, delivery_id: int) -> bool:
        now = self.clock.time()
        with self._transaction() as db:
            return db.execute("UPDATE deliveries SET status = %s, next_attempt = %s, attempts = 0, updated = %s"
                              " WHERE id = %s AND status = %s", (PENDING, now, now, delivery_id, DEAD)).rowcount == 1

    def prune(self, *, max_age: float = 30 * 86400, max_events: int = 10_000,
              max_metrics: int = 1_000_000, every: float | None = None) -> int:
        """See :meth:`Store.prune`; the times are the server's."""
        finished = "NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.event_id AND d.status = 'pending')"
        limits = (max_age, max_events, max_metrics)
        if every is not None:
            with self._read() as db:
                seen = db.execute(f"SELECT (SELECT value FROM run_state WHERE key = %s), {_NOW}",
                                  (PRUNED_KEY,)).fetchone()
            if seen is not None and pruned_within(seen[0], float(seen[1]), every, limits):
                return 0
        with self._transaction() as db:
            row = db.execute(f"SELECT pg_try_advisory_xact_lock({_PRUNE_LOCK}), {_NOW} - %s, {_NOW}",
                             (max_age,)).fetchone()
            if not row or not row[0]:
                return 0  # another process is pruning the same history right now
            cutoff = float(row[1])  # the server's clock: a host whose clock is ahead prunes nothing early
            db.execute(_PUT_STATE, (PRUNED_KEY, prune_record(float(row[2]), limits), float(row[2])))
            db.execute("DELETE FROM metrics WHERE at < %s", (cutoff,))
            db.execute("DELETE FROM metrics WHERE seq <= (SELECT seq FROM metrics ORDER BY seq DESC LIMIT 1"
                       " OFFSET %s)", (max_metrics,))
            removed = db.execute(f"DELETE FROM events WHERE created < %s AND {finished}", (cutoff,)).rowcount
            removed += db.execute(f"DELETE FROM events WHERE {finished} AND seq <= (SELECT seq FROM events"
                                  " ORDER BY seq DESC LIMIT 1 OFFSET %s)", (max_events,)).rowcount
        return removed

    def set_state(self, key: str, value: str) -> None:
        """Called from training code (a monitor's state): where the database cannot be
        reached it raises at once (for half a minute after a failed try), never waits."""
        with self.patience(0.5), self._transaction() as db:
            db.execute(_PUT_STATE, (key, value, self.clock.time()))

    def get_state(self, key: str) -> str | None:
        with self.patience(0.5), self._read() as db:
            row = db.execute("SELECT value FROM run_state WHERE key = %s", (key,)).fetchone()
        return str(row[0]) if row else None

    def forget_state(self, key: str) -> None:
        with self.patience(0.5), self._transaction() as db:
            db.execute("DELETE FROM run_state WHERE key = %s", (key,))

    def journal_mark(self, name: str) -> int:
        with self._read() as db:
            row = db.execute("SELECT position FROM journal_marks WHERE name = %s", (_mark(name),)).fetchone()
        return int(row[0]) if row else 0

    def forget_journal(self, name: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM journal_marks WHERE name = %s", (_mark(name),))

    def reserve(self, target: str, per_second: float, burst: float) -> float:
        """Take a send from ``target``'s token bucket, shared by every process on this
        database: seconds to wait before sending (0: at once). The send is booked even
        when it must wait, so processes asking together queue up instead of all going."""
        with self._transaction() as db:
            row = db.execute(
                f"INSERT INTO pacing (target, tokens, stamp) VALUES (%(target)s, %(burst)s - 1, {_NOW})"
                " ON CONFLICT (target) DO UPDATE SET stamp = excluded.stamp, tokens = LEAST(%(burst)s,"
                " pacing.tokens + GREATEST(excluded.stamp - pacing.stamp, 0) * %(rate)s) - 1 RETURNING tokens",
                {"target": target, "burst": float(burst), "rate": float(per_second)}).fetchone()
        tokens = float(row[0]) if row else 0.0
        return 0.0 if tokens >= 0 else -tokens / per_second

    def throttle(self, channel: str, event_type: str, run_id: str, window: float) -> tuple[bool, int]:
        """Whether a repeat of (event type, run) goes to ``channel`` now, for every
        process on this database: (send, how many were held back before it). Decided in
        one statement on the server's clock, so two hosts never both send within the window."""
        now = "extract(epoch from now())"  # one value within the statement
        due = f"{now} - t.last_sent >= %(w)s"
        with self._transaction() as db:
            row = db.execute(  # SET reads the row as it was: ``told`` keeps the count the send tells of
                "INSERT INTO throttle AS t (channel, event_type, run_id, last_sent, held, told)"
                f" VALUES (%(c)s, %(t)s, %(r)s, {now}, 0, 0) ON CONFLICT (channel, event_type, run_id) DO UPDATE SET"
                f" held = CASE WHEN {due} THEN 0 ELSE t.held + 1 END,"
                f" told = CASE WHEN {due} THEN t.held ELSE t.told END,"
                f" last_sent = CASE WHEN {due} THEN {now} ELSE t.last_sent END"
                f" RETURNING t.last_sent = {now}, t.told",
                {"c": channel, "t": event_type, "r": run_id, "w": window}).fetchone()
        assert row is not None
        return bool(row[0]), int(row[1])

    def take_held(self, channel: str, event_type: str, run_id: str) -> int:
        """How many repeats are held back with no digest yet, now taken (a closing summary)."""
        with self._transaction() as db:
            row = db.execute(
                "UPDATE throttle SET told = held, held = 0 WHERE channel = %(c)s AND event_type = %(t)s"
                " AND run_id = %(r)s RETURNING told", {"c": channel, "t": event_type, "r": run_id}).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    # -- reading ---------------------------------------------------------------------------

    def has_due(self, channel: str) -> bool:
        """See :meth:`Store.has_due`: by the server's clock, as claims go."""
        with self._read() as db:
            return db.execute(f"SELECT 1 FROM deliveries WHERE channel = %s AND status = %s AND next_attempt <= {_NOW}"
                              " LIMIT 1", (channel, PENDING)).fetchone() is not None

    def next_due(self, channel: str) -> float | None:
        with self._read() as db:
            row = db.execute("SELECT MIN(next_attempt) FROM deliveries WHERE channel = %s AND status = %s",
                             (channel, PENDING)).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def pending(self, channels: Sequence[str], due_by: float | None = None) -> PendingSummary:
        if not channels:
            return PendingSummary(0, 0, None)
        by = float("inf") if due_by is None else due_by
        with self._read() as db:
            row = db.execute(
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE next_attempt <= %s), MIN(next_attempt) FILTER"
                " (WHERE next_attempt > %s) FROM deliveries WHERE status = %s AND channel = ANY(%s)",
                (by, by, PENDING, list(channels))).fetchone()
        assert row is not None
        return PendingSummary(int(row[0]), int(row[1]), None if row[2] is None else float(row[2]))

    def statuses(self, delivery_ids: Sequence[int]) -> dict[DeliveryStatus, int]:
        found: dict[DeliveryStatus, int] = {}
        with self._read() as db:
            for word, number in db.execute("SELECT status, COUNT(*) FROM deliveries WHERE id = ANY(%s)"
                                           " GROUP BY status", (list(delivery_ids),)).fetchall():
                found[_status(word)] = found.get(_status(word), 0) + int(number)
        return found

    def counts(self) -> dict[str, ChannelCounts]:
        found: dict[str, dict[str, int]] = {}
        with self._read() as db:
            for channel, word, number in db.execute(
                    "SELECT channel, status, COUNT(*) FROM deliveries WHERE status IN (%s, %s)"
                    " GROUP BY channel, status", (PENDING, DEAD)).fetchall():
                found.setdefault(channel, {})[word] = int(number)
        return {channel: ChannelCounts(**numbers) for channel, numbers in found.items()}

    def metric_series(self, run_id: str, *, max_points: int = metrics.SERIES_POINTS) -> dict[str, list[MetricPoint]]:
        with self._read() as db:
            names = [name for (name,) in db.execute("SELECT DISTINCT name FROM metrics WHERE run_id = %s"
                                                    " ORDER BY name", (run_id,)).fetchall()]
            return {name: metrics.downsample(_series(db, run_id, name), max_points) for name in names}

    def history(self, *, run_id: str | None = None, limit: int = 50) -> list[HistoryEntry]:
        query = "SELECT event_id, created, run_id, event_type, level, title, data FROM events"
        args: list[Any] = []
        if run_id is not None:
            query += " WHERE run_id = %s"
            args.append(run_id)
        with self._read() as db:
            rows = db.execute(query + " ORDER BY seq DESC LIMIT %s", (*args, limit)).fetchall()
            deliveries = _deliveries_of(db, [row[0] for row in rows])
        entries = []
        for event_id, created, run, event_type, level, title, data in rows:
            event = _loads(data)
            entries.append(HistoryEntry(event_id, created, run, event_type, level, title,
                                        tuple(DeliveryRow(c, _status(st), a, e, n)
                                              for _, c, st, a, e, n in deliveries.get(event_id, ())),
                                        event.get("model_name"), event))
        return entries

    def outcomes(self, event_id: str) -> dict[str, tuple[DeliveryStatus, str | None]]:
        with self._read() as db:
            rows = db.execute("SELECT channel, status, last_error FROM deliveries WHERE event_id = %s",
                              (event_id,)).fetchall()
        return {channel: (_status(status), error) for channel, status, error in rows}

    def outbox(self, statuses: Iterable[DeliveryStatus] = (DeliveryStatus.PENDING, DeliveryStatus.FAILED),
               limit: int = 200) -> list[OutboxEntry]:
        wanted = [_WORDS[status] for status in statuses]
        with self._read() as db:
            rows = db.execute(
                "SELECT d.id, d.channel, d.status, e.title, d.attempts, d.last_error, d.next_attempt, e.run_id"
                " FROM deliveries d JOIN events e ON e.event_id = d.event_id WHERE d.status = ANY(%s)"
                " ORDER BY d.id LIMIT %s", (wanted, limit)).fetchall()
        return [OutboxEntry(d, c, _status(st), t, a, e, n, r) for d, c, st, t, a, e, n, r in rows]

    def runs(self, *, limit: int = 200, metrics_since: float | None = None, run_id: str | None = None
             ) -> list[RunSummary]:
        which = "run_id IS NOT NULL" if run_id is None else "run_id = %s"
        told_columns = "event_type, created, ranks, model_name, host, rank, cost"
        runs = []
        with self._read() as db:
            rows = db.execute(f"SELECT run_id, MIN(created), MAX(created), COUNT(*) FROM events WHERE {which}"
                              " GROUP BY run_id ORDER BY MAX(created) DESC LIMIT %s",
                              (*([] if run_id is None else [run_id]), limit)).fetchall()
            recent: dict[str, float] = {}
            if metrics_since is not None:
                recent = dict(db.execute("SELECT run_id, MAX(at) FROM metrics WHERE at > %s AND run_id IS NOT NULL"
                                         " GROUP BY run_id", (metrics_since,)).fetchall())
            for run, started, last, count in rows:
                told = db.execute(f"SELECT {told_columns}, duration FROM events WHERE run_id = %s AND event_type"
                                  " = ANY(%s) ORDER BY created", (run, list(_RUN_FACT_EVENTS))).fetchall()
                ends = db.execute(
                    f"(SELECT {told_columns}, NULL FROM events WHERE run_id = %s ORDER BY created LIMIT 1)"
                    f" UNION ALL (SELECT {told_columns}, NULL FROM events WHERE run_id = %s ORDER BY created DESC"
                    f" LIMIT 1) UNION ALL (SELECT {told_columns}, NULL FROM events WHERE run_id = %s"
                    " AND event_type = 'cost_threshold_exceeded' ORDER BY created DESC LIMIT 1)",
                    (run, run, run)).fetchall()
                runs.append(_run_summary(run, started, max(last, recent.get(run, last)), count, [*ends, *told]))
        return runs

    def run_events(self, run_id: str, *, limit: int = 500, before: float | None = None) -> list[RunEvent]:
        query = "SELECT event_id, created, event_type, level, title, data FROM events WHERE run_id = %s"
        args: list[Any] = [run_id]
        if before is not None:
            query += " AND created < %s"
            args.append(before)
        with self._read() as db:
            rows = db.execute(query + " ORDER BY created DESC, seq DESC LIMIT %s", (*args, limit)).fetchall()
            deliveries = _deliveries_of(db, [row[0] for row in rows])
            ids = [d[0] for found in deliveries.values() for d in found]
            tries: dict[int, list[Attempt]] = {}
            for delivery_id, at, outcome, error in db.execute(
                    "SELECT delivery_id, at, outcome, error FROM attempts WHERE delivery_id = ANY(%s)"
                    " ORDER BY at, seq", (ids,)).fetchall():
                tries.setdefault(delivery_id, []).append(Attempt(at, outcome, error))
        return [RunEvent(event_id, created, event_type, level, title, _loads(data),
                         tuple(DeliveryDetail(d, c, _status(st), a, e, n, tuple(tries.get(d, ())))
                               for d, c, st, a, e, n in deliveries.get(event_id, ())))
                for event_id, created, event_type, level, title, data in rows]

    def run_costs(self, run_id: str) -> list[tuple[float, float]]:
        with self._read() as db:
            rows = db.execute("SELECT created, cost FROM events WHERE run_id = %s AND cost IS NOT NULL"
                              " ORDER BY created", (run_id,)).fetchall()
        return [(float(at), float(cost)) for at, cost in rows]

    def last_change(self) -> tuple[int, int, int]:
        with self._read() as db:
            row = db.execute("SELECT (SELECT COALESCE(MAX(seq), 0) FROM events), (SELECT COALESCE(MAX(seq), 0)"
                             " FROM attempts), (SELECT COALESCE(MAX(seq), 0) FROM metrics)").fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])

    def channel_failures(self, *, limit: int = 200) -> list[ChannelFailure]:
        with self._read() as db:
            rows = db.execute(
                "SELECT a.at, d.channel, a.outcome, a.error, d.id, e.title, e.run_id FROM attempts a"
                " JOIN deliveries d ON d.id = a.delivery_id JOIN events e ON e.event_id = d.event_id"
                " WHERE a.outcome IN ('retry', 'dead') ORDER BY a.at DESC LIMIT %s", (limit,)).fetchall()
        return [ChannelFailure(*row) for row in rows]


class ServerClock(Clock):
    """The database server's wall clock, as this host's clock plus the offset measured at
    each connection (half the round trip taken off); the host's own until connected."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.aligned = False  # what the engine stamps before then is moved at ingest

    def time(self) -> float:
        return time.time() + self.offset

    def set_from(self, db: psycopg.Connection[Any]) -> None:
        before = time.time()
        row = db.execute(f"SELECT {_NOW}").fetchone()
        after = time.time()
        if row and row[0] is not None:
            self.offset = float(row[0]) - (before + after) / 2
            self.aligned = True


def _text_without_nul(db: psycopg.Connection[Any]) -> None:
    """PostgreSQL's text holds no NUL character: one in a title or a metric's name (which
    SQLite stores) is written as U+FFFD, so its event is stored rather than refused."""
    from psycopg.types.string import StrBinaryDumper, StrDumperUnknown

    class Text(StrDumperUnknown):
        def dump(self, obj: str) -> Any:
            return super().dump(obj.replace("\x00", "\ufffd") if "\x00" in obj else obj)

    class BinaryText(StrBinaryDumper):
        def dump(self, obj: str) -> Any:
            return super().dump(obj.replace("\x00", "\ufffd") if "\x00" in obj else obj)

    db.adapters.register_dumper(str, Text)
    db.adapters.register_dumper(str, BinaryText)


# SQLSTATEs that pass: a read-only database (a standby during failover), a role not yet
# granted what it needs, a lock or statement timeout. Waited out like a server away: the
# events wait in the journal (sending them from memory would send them twice later).
_PASSING = frozenset({"25006", "42501", "55P03", "57014", "57P01", "57P03"})


def _passing(exc: BaseException) -> bool:
    return getattr(exc, "sqlstate", None) in _PASSING


def _refused(exc: BaseException, doing: str) -> StoreError | StoreUnavailable:
    if _passing(exc):
        return StoreUnavailable(f"{doing}: {_short(exc)}")
    return StoreError(f"{doing}: {_short(exc)}")


def _short(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _mark(name: str) -> str:
    """Journal files are named per process, not per host: a host's marks are its own."""
    from afs_core.source import host_name

    return f"{host_name()}/{name}"


def _like_prefix(host: str) -> str:
    return host.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + ":%"


def _host_of(event: Mapping[str, Any]) -> str | None:
    source = event.get("source")
    host = source.get("host") if isinstance(source, Mapping) else None
    return str(host) if host else None


def _loads(data: str) -> dict[str, Any]:
    try:
        event = json.loads(data)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}


def _join(db: psycopg.Cursor[Any], dedup_key: str, rank: int | None, host: str | None, since: float) -> str | None:
    """Add ``rank`` (on ``host``) to the event stored under ``dedup_key`` since ``since``; its id, or None."""
    row = db.execute("SELECT event_id, ranks, hosts FROM events WHERE dedup_key = %s AND created >= %s"
                     " ORDER BY created LIMIT 1", (dedup_key, since)).fetchone()
    if row is None:
        return None
    ranks = [r for r in (row[1] or "").split(",") if r]
    if rank is not None and str(rank) not in ranks:
        ranks.append(str(rank))
    hosts = [h for h in (row[2] or "").split(",") if h]
    if host and host not in hosts:
        hosts.append(host.replace(",", " "))
    db.execute("UPDATE events SET ranks = %s, hosts = %s WHERE event_id = %s",
               (",".join(ranks), ",".join(hosts), row[0]))
    return str(row[0])


def _merged(event: NotificationEvent, ranks: str | None, hosts: str | None) -> NotificationEvent:
    """The event as sent for every rank that joined it: which ranks, on which hosts."""
    rank_list = [r for r in (ranks or "").split(",") if r]
    host_list = [h for h in (hosts or "").split(",") if h]
    if len(rank_list) < 2 and len(host_list) < 2:
        return event
    context = {**event.context, "ranks": ", ".join(rank_list)}
    if host_list:
        context["hosts"] = ", ".join(host_list)
        context["reported_by"] = (f"{len(rank_list)} ranks on {len(host_list)} "
                                  f"host{'s' if len(host_list) != 1 else ''}")
    return event.evolve(context=context)


def _deliveries_of(db: psycopg.Cursor[Any], event_ids: list[str]) -> dict[str, list[tuple[Any, ...]]]:
    found: dict[str, list[tuple[Any, ...]]] = {}
    for row in db.execute("SELECT event_id, id, channel, status, attempts, last_error, next_attempt FROM deliveries"
                          " WHERE event_id = ANY(%s) ORDER BY channel", (event_ids,)).fetchall():
        found.setdefault(row[0], []).append(tuple(row[1:]))
    return found


def _record(db: psycopg.Cursor[Any], rows: Iterable[MetricRow]) -> None:
    rows = list(rows)
    if rows:
        db.executemany("INSERT INTO metrics (source, run_id, model_name, name, step, value, at)"
                       " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (source, name) DO NOTHING", rows)


def _series(db: psycopg.Cursor[Any], run_id: str, name: str) -> list[MetricPoint]:
    return metrics.drawable(MetricPoint(step, value, at) for step, value, at in db.execute(
        "SELECT step, value, at FROM metrics WHERE run_id = %s AND name = %s AND value IS NOT NULL"
        " ORDER BY at, seq", (run_id, name)).fetchall())


def _with_loss_curve(db: psycopg.Cursor[Any], event: Mapping[str, Any]) -> Mapping[str, Any]:
    """As the SQLite store's: an end-of-run event carries its run's loss curve."""
    run_id, context = event.get("run_id"), event.get("context")
    if (event.get("event_type") not in metrics.CURVED_EVENTS or not isinstance(run_id, str)
            or not isinstance(context, Mapping) or "loss_curve" in context):
        return event
    names = [name for (name,) in db.execute("SELECT DISTINCT name FROM metrics WHERE run_id = %s",
                                            (run_id,)).fetchall()]
    name = metrics.loss_name(names)
    if name is None:
        return event
    pairs = metrics.curve_pairs(metrics.downsample(_series(db, run_id, name), metrics.CURVE_POINTS))
    if len(pairs) < 2:
        return event
    return {**event, "context": {**context, "loss_curve": pairs}}
