"""The local SQLite store: the outbox that makes "nothing is lost" true, and the history.

Every accepted event is written here (from the journal) with one delivery row per
channel. Workers claim due deliveries with a lease, so processes sharing the store
(the ranks of a job, concurrent runs) never send the same delivery twice while both
live; a lease whose owner died is taken over. Deliveries end delivered, filtered or
dead (with the reason); history is pruned by age and count.

A store that SQLite finds damaged is moved aside and replaced by a fresh one holding
what could be salvaged; a store with no path lives in memory (nothing durable).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from afs_core.clock import SYSTEM_CLOCK, Clock
from afs_core.delivery import metrics
from afs_core.delivery.location import StoreLocation
from afs_core.delivery.metrics import MetricPoint, MetricRow
from afs_core.events import NotificationEvent
from afs_core.results import DeliveryStatus

logger = logging.getLogger("afs.store")

# How each status is written in the store ("dead": failed for good, a dead letter).
_WORDS = {DeliveryStatus.PENDING: "pending", DeliveryStatus.DELIVERED: "delivered",
          DeliveryStatus.FILTERED: "filtered", DeliveryStatus.FAILED: "dead"}
_STATUSES = {word: status for status, word in _WORDS.items()}
PENDING, DEAD = _WORDS[DeliveryStatus.PENDING], _WORDS[DeliveryStatus.FAILED]


class StoreUnavailable(sqlite3.OperationalError):
    """The store cannot be reached now (a database server down, restarting, or too far):
    it will pass. Told as SQLite's "busy", which every caller already waits out: accepted
    events stay in the journal and go in, in order, once it answers."""

    sqlite_errorcode = 5  # SQLITE_BUSY


class StoreError(sqlite3.DatabaseError):
    """A database server refused what the store asked (permissions, a schema it does
    not know): unlike :class:`StoreUnavailable`, waiting does not make it pass."""


def status_name(status: DeliveryStatus) -> str:
    """The word the store and the ``afs`` command use for ``status`` ("dead" for failed)."""
    return _WORDS[status]


def _status(word: str) -> DeliveryStatus:
    return _STATUSES.get(word, DeliveryStatus.FAILED)

MAX_METRIC_ROWS = 1_000_000  # recorded metrics kept (the newest), about 100 MB at most

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
    created REAL,
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
CREATE TABLE IF NOT EXISTS journal_marks (
    name TEXT PRIMARY KEY,
    offset INTEGER NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS run_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    source TEXT NOT NULL,
    run_id TEXT,
    model_name TEXT,
    name TEXT NOT NULL,
    step INTEGER,
    value REAL,
    at REAL NOT NULL,
    UNIQUE (source, name)
);
CREATE INDEX IF NOT EXISTS metrics_points ON metrics(run_id, name, step, value, at);
CREATE INDEX IF NOT EXISTS metrics_age ON metrics(at);
CREATE INDEX IF NOT EXISTS events_run ON events(run_id, created);
CREATE INDEX IF NOT EXISTS events_run_type ON events(run_id, event_type, created);
CREATE INDEX IF NOT EXISTS attempts_failures ON attempts(at) WHERE outcome IN ('retry', 'dead');
"""

#: A claim walks this index in the order it sends (its event's time, then id) and stops
#: at its limit, the due time read from the index itself. Sorting every due row instead
#: cost 1.8 ms a claim with 3,000 waiting, 6 ms with 10,000: a backlog drained in
#: quadratic time. Made once the deliveries have their times; its presence says so.
_DELIVERY_ORDER = "CREATE INDEX deliveries_order ON deliveries(channel, status, created, id, next_attempt)"
#: Up to this many due deliveries a claim sorts; past it, it walks deliveries_order.
FEW_DUE = 256
#: A delivery an older afs-core writes into this store (one still running beside this
#: one) gets its event's time all the same.
_DELIVERY_TIME = """
CREATE TRIGGER IF NOT EXISTS deliveries_created AFTER INSERT ON deliveries WHEN NEW.created IS NULL
BEGIN
    UPDATE deliveries SET created = (SELECT e.created FROM events e WHERE e.event_id = NEW.event_id)
    WHERE id = NEW.id;
END
"""


def _prepare(db: sqlite3.Connection) -> bool:
    """Make the tables (a no-op when they are there); give a store an older afs-core
    wrote its deliveries' event times, which claims are ordered by.

    The column is added on its own (a change to the schema alone, which a nearly full
    disk still takes); filling it and indexing it rewrite every delivery, so where that
    cannot be done now (no room) the store opens all the same: claims then sort what is
    due by the event's own time, as before, and the next opening tries again. True when
    the deliveries have their times.
    """
    db.executescript(_SCHEMA)
    if not _has_delivery_times(db):
        with _immediate(db):
            if not _has_delivery_times(db):
                db.execute("ALTER TABLE deliveries ADD COLUMN created REAL")
    db.executescript(_DELIVERY_TIME)
    if _has_delivery_order(db):
        return True
    try:
        with _immediate(db):
            if not _has_delivery_order(db):
                fill_delivery_times(db)
                db.execute(_DELIVERY_ORDER)
    except sqlite3.Error as exc:
        if is_damage(exc):
            raise
        logger.warning("afs: the store's deliveries could not be given their event times now (%s); they go out "
                       "oldest first all the same, claims sort what is due until the store has room", exc)
        return False
    return True


def _has_delivery_times(db: sqlite3.Connection) -> bool:
    return any(row[1] == "created" for row in db.execute("PRAGMA table_info(deliveries)"))


def _has_delivery_order(db: sqlite3.Connection) -> bool:
    found = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'deliveries_order'").fetchone()
    return found is not None


@contextlib.contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


def fill_delivery_times(db: sqlite3.Connection) -> None:
    """Deliveries without their event's time (written by an older afs-core, or salvaged
    from its store) get it."""
    db.execute("UPDATE deliveries SET created = (SELECT e.created FROM events e WHERE e.event_id = deliveries.event_id)"
               " WHERE created IS NULL")


def open_store(
    env: Mapping[str, str] | None = None, *, clock: Clock = SYSTEM_CLOCK, read_only_ok: bool = False
) -> Store:
    """The store where settings and this machine allow one (see :mod:`afs_core.delivery.location`);
    the PostgreSQL database ``AFS_STORE_URL`` names when it is set (a wrong URL, or
    psycopg missing, is a ConfigurationError at once).

    ``AFS_HOME`` that cannot hold a store is a ConfigurationError: the user asked for
    it. Otherwise the first usable default place is taken, and with none at all the
    store lives in memory, with ``location.reason`` saying why it is not durable.
    ``read_only_ok``: a store that exists but cannot be written (a read-only mount)
    is opened for reading, as ``afs history`` needs.
    """
    env = os.environ if env is None else env
    lease = _lease_seconds(env)
    url = env.get("AFS_STORE_URL", "").strip()
    if url:
        return _open_postgres(url, env, clock, lease)
    store = _open_sqlite(env, clock, read_only_ok)
    store.lease_seconds = lease
    return store


def _lease_seconds(env: Mapping[str, str]) -> float | None:
    from afs_core.config import env_float

    return env_float(env, "AFS_LEASE_SECONDS", 0.0, minimum=1.0) if env.get("AFS_LEASE_SECONDS", "").strip() else None


def _open_postgres(url: str, env: Mapping[str, str], clock: Clock, lease: float | None) -> Store:
    """The shared store ``AFS_STORE_URL`` names; this host's journal stays under ``AFS_HOME``'s place."""
    from afs_core.delivery.location import data_directories, private_temp_directory
    from afs_core.errors import ConfigurationError

    try:
        from afs_core.delivery import pgstore

        pgstore.check_url(url)
        import psycopg  # noqa: F401  (the [postgres] extra)
    except ValueError as exc:
        raise ConfigurationError(f"AFS_STORE_URL: {exc}") from None
    except ImportError:
        raise ConfigurationError("AFS_STORE_URL names a PostgreSQL database, but psycopg is not installed: "
                                 "pip install 'afs-core[postgres]'") from None
    explicit = env.get("AFS_HOME", "").strip()
    homes: list[Path | Callable[[], Path]] = [Path(explicit).expanduser()] if explicit else [
        *data_directories(env), private_temp_directory]
    problems = []
    for candidate in homes:
        try:
            home = candidate if isinstance(candidate, Path) else candidate()
            (home / "journal").mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            if explicit:
                raise ConfigurationError(f"AFS_HOME {explicit!r} cannot hold the journal: {exc}") from None
            problems.append(str(exc))
            continue
        store = pgstore.PostgresStore(url, home=home, clock=clock, lease_seconds=lease)
        if store.url not in _told_urls:
            _told_urls.add(store.url)
            logger.info("afs: the outbox and history are in %s; this host's journal is in %s",
                        pgstore.redact_url(url), home / "journal")
        return store  # type: ignore[return-value]  # the same public methods (see pgstore)
    raise ConfigurationError("no place can hold this host's journal: " + "; ".join(problems))


_told_urls: set[str] = set()


def _open_sqlite(env: Mapping[str, str], clock: Clock, read_only_ok: bool) -> Store:
    from afs_core.delivery.location import data_directories, network_filesystem, private_temp_directory, store_file
    from afs_core.errors import ConfigurationError
    from afs_core.source import host_name

    explicit = env.get("AFS_HOME", "").strip()
    candidates: list[Path | Callable[[], Path]] = []  # a function: worked out only when reached
    if explicit:
        candidates.append(Path(explicit).expanduser())
    else:
        candidates.extend(data_directories(env))
        candidates.append(private_temp_directory)
    problems = []
    for candidate in candidates:
        directory: Path | str = "the temporary directory"
        try:
            directory = candidate if isinstance(candidate, Path) else candidate()
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            network_fs = network_filesystem(directory)
            path = store_file(directory, host_name(), network_fs)
            store = Store(path, clock=clock, shared_filesystem=network_fs is not None)
        except (OSError, sqlite3.Error) as exc:
            readable = _read_only(directory, clock, exc) if read_only_ok and isinstance(directory, Path) else None
            if readable is not None:
                return readable
            if explicit:
                raise ConfigurationError(f"AFS_HOME {explicit!r} cannot hold the outbox: {exc}") from None
            problems.append(f"{directory}: {exc}")
            continue
        store.location = StoreLocation(path, explicit=bool(explicit), network_fs=network_fs)
        _tell(store.location, problems)
        return store
    reason = "no place could hold the store (" + "; ".join(problems) + ")"
    store = Store(None, clock=clock)
    store.location = StoreLocation(None, reason=reason)
    _tell(store.location, problems)
    return store


def _read_only(directory: Path, clock: Clock, why: BaseException) -> Store | None:
    """The store in ``directory`` opened for reading only, or None when there is none."""
    from afs_core.delivery.location import network_filesystem, store_file
    from afs_core.source import host_name

    network_fs = network_filesystem(directory)
    path = store_file(directory, host_name(), network_fs)
    if not path.is_file():
        return None
    try:
        store = Store(path, clock=clock, read_only=True)
        store.counts()  # it can be read
    except (OSError, sqlite3.Error):
        return None
    store.location = StoreLocation(path, reason=f"read-only: {why}", network_fs=network_fs)
    return store


_told: set[StoreLocation] = set()


def _tell(location: StoreLocation, problems: list[str]) -> None:
    """Say once per process where the store is, and why there."""
    if location in _told:
        return
    _told.add(location)
    if location.path is None:
        logger.warning("afs: not durable: %s; notifications are delivered from memory and a crash loses the "
                       "undelivered ones", location.reason)
        return
    why = f" ({'; '.join(problems)} could not hold it)" if problems else ""
    shared = (f"; {location.directory} is on {location.network_fs}, which other hosts share, so this host keeps its "
              "own file without WAL") if location.network_fs else ""
    logger.info("afs: the outbox and history are in %s%s%s", location.path, why, shared)


# Records the store returns: named tuples (cheap to define at import, unlike attrs classes).


class Claimed(NamedTuple):
    """A delivery this process now holds the lease on."""

    delivery_id: int
    channel: str
    attempts: int
    created: float
    event: NotificationEvent


class DeliveryRow(NamedTuple):
    """What one channel did with one event."""

    channel: str
    status: DeliveryStatus
    attempts: int
    last_error: str | None
    next_attempt: float


class HistoryEntry(NamedTuple):
    """One stored event, its deliveries, and the event itself as plain data."""

    event_id: str
    created: float
    run_id: str | None
    event_type: str
    level: str
    title: str
    deliveries: tuple[DeliveryRow, ...]
    model_name: str | None
    event: Mapping[str, Any]


class OutboxEntry(NamedTuple):
    """A delivery that has not been delivered: pending, or dead with its reason."""

    delivery_id: int
    channel: str
    status: DeliveryStatus
    title: str
    attempts: int
    last_error: str | None
    next_attempt: float
    run_id: str | None


class ChannelCounts(NamedTuple):
    """Deliveries of one channel still in the outbox: pending, and dead (failed for good)."""

    pending: int = 0
    dead: int = 0


class PendingSummary(NamedTuple):
    """Pending deliveries of some channels: how many, how many are due by a time,
    and when the first of the others is due."""

    total: int
    due: int
    next_after: float | None


# What the dashboard reads (afs-dashboard): runs, a run's events with every attempt, failures.


class RunSummary(NamedTuple):
    """One run of the history: who ran it where, when, how it stands and what it cost.

    ``state_event`` is the type of its newest start, end, pause, resume or stall event
    (None when it told none); ``last_seen`` the newest of its events and recent metrics.
    """

    run_id: str
    model_name: str | None
    hosts: tuple[str, ...]
    ranks: tuple[int, ...]
    started: float
    last_seen: float
    state_event: str | None
    state_at: float | None
    events: int
    cost: float | None
    duration: float | None


class Attempt(NamedTuple):
    """One try of a delivery: when, how it ended (``delivered``, ``retry``, ``dead``, ``filtered``), why."""

    at: float
    outcome: str
    error: str | None


class DeliveryDetail(NamedTuple):
    """What one channel did with one event, try by try."""

    delivery_id: int
    channel: str
    status: DeliveryStatus
    attempts: int
    last_error: str | None
    next_attempt: float
    tries: tuple[Attempt, ...]


class RunEvent(NamedTuple):
    """One event of a run, as stored, with its deliveries."""

    event_id: str
    created: float
    event_type: str
    level: str
    title: str
    event: Mapping[str, Any]
    deliveries: tuple[DeliveryDetail, ...]


class ChannelFailure(NamedTuple):
    """A failed try of a channel: retried later (``retry``) or given up (``dead``)."""

    at: float
    channel: str
    outcome: str
    error: str | None
    delivery_id: int
    title: str
    run_id: str | None


#: The event types that say how a run stands, newest wins (the dashboard's run states).
RUN_STATE_EVENTS = ("training_started", "training_completed", "training_failed", "training_paused",
                    "training_resumed", "training_stalled", "training_progress_resumed")
_RUN_FACT_EVENTS = (*RUN_STATE_EVENTS, "out_of_memory", "error_occurred", "nan_detected")


@functools.lru_cache(maxsize=1)
def _pid_namespace() -> str:
    """Which process-id space this process lives in (containers have their own)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


#: Where a store keeps when it was last pruned, and with what limits (see Store.prune's ``every``).
PRUNED_KEY = "afs:pruned"
#: A run_state value written, or written over: (key, value, updated).
_PUT_STATE = ("INSERT INTO run_state (key, value, updated) VALUES (?, ?, ?)"
              " ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated = excluded.updated")


def prune_record(now: float, limits: tuple[float, int, int]) -> str:
    """What PRUNED_KEY holds after a prune at ``now`` with ``limits`` (max_age, max_events,
    max_metrics)."""
    return json.dumps({"at": now, "max_age": limits[0], "max_events": limits[1], "max_metrics": limits[2]})


def pruned_within(value: str | None, now: float, seconds: float, limits: tuple[float, int, int]) -> bool:
    """Whether the prune PRUNED_KEY records (``value``) ran less than ``seconds`` before
    ``now`` with limits at least as strict as ``limits``: then what it kept, a prune with
    these would keep too. A time ahead of ``now`` (a clock set back) or a record that
    cannot be read counts as not."""
    if not value:
        return False
    try:
        seen = json.loads(value)
        kept = (seen["max_age"], seen["max_events"], seen["max_metrics"])
        return (0.0 <= now - float(seen["at"]) < seconds
                and all(float(theirs) <= float(mine) for theirs, mine in zip(kept, limits, strict=True)))
    except (ValueError, TypeError, KeyError):
        return False


def owner_id() -> str:
    """Who holds a lease: host, pid (and the pid namespace it means something in), thread,
    so a dead owner on this host is recognised and a live one in another container is not
    taken for dead."""
    from afs_core.source import host_name

    return f"{host_name()}:{os.getpid()}:{threading.get_ident()}@{_pid_namespace()}"


def _owner_is_dead(owner: str | None) -> bool:
    from afs_core.source import host_name

    if not owner:
        return True
    who, marked, namespace = owner.partition("@")
    host, _, rest = who.partition(":")
    pid_text = rest.partition(":")[0]
    elsewhere = marked and namespace != _pid_namespace()  # (leases from before 0.2 carry none)
    if host != host_name() or not pid_text.isdigit() or elsewhere:
        return False  # another machine's (or container's) process: wait for its lease to expire
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


_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def is_damage(exc: BaseException) -> bool:
    """Whether an SQLite error means the file is damaged (not busy, not full)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc)
    return "malformed" in text or "not a database" in text


_R = TypeVar("_R")


def _survives_damage(method: Callable[..., _R]) -> Callable[..., _R]:
    """Run a store method again on a fresh store when the file turned out damaged."""

    @functools.wraps(method)
    def guarded(self: Store, *args: Any, **kwargs: Any) -> _R:
        generation = self._generation
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if not self.durable or self.read_only or not is_damage(exc):
                raise  # a store opened only to be read is never replaced
            self._recover(exc, generation)
        return method(self, *args, **kwargs)

    return guarded


class Store:
    """The outbox and history at ``path`` (created 0600 in a 0700 directory), or in
    memory when ``path`` is None.

    :param clock: the time for due dates, leases and stored timestamps.
    :param shared_filesystem: the file is on a filesystem other hosts see: use
        SQLite's rollback journal, not WAL's memory shared on one host.
    """

    def __init__(
        self, path: str | os.PathLike[str] | None, *, clock: Clock = SYSTEM_CLOCK, shared_filesystem: bool = False,
        read_only: bool = False,
    ) -> None:
        self.path = None if path is None else Path(path)
        self.clock = clock
        self.shared_filesystem = shared_filesystem
        #: Opened for reading only (a read-only mount): history and the outbox can be
        #: looked at, nothing is written.
        self.read_only = read_only and path is not None
        #: Where the store is and, for one in memory, why (``afs status`` shows it).
        self.location = StoreLocation(self.path, reason="" if self.path else "the store was opened in memory")
        #: How long a claim holds without renewal (None: the engine's default); ``AFS_LEASE_SECONDS``.
        self.lease_seconds: float | None = None
        self._local = threading.local()
        self._generation = 0  # moves on when a damaged file is replaced
        self._recover_lock = threading.Lock()
        self._memory: sqlite3.Connection | None = None
        self._memory_lock = threading.RLock()
        self._prepared: int | None = None  # the inode of the file last made ready (see _prepare)
        self._ordered = True  # its deliveries have their event's time (and its index)
        self._create()

    #: Writes on the caller's thread are cheap here (a local file, half a second at most):
    #: the engine stores a rank's failure at once rather than through the journal.
    quick_writes = True

    @property
    def durable(self) -> bool:
        """Whether what is stored survives this process."""
        return self.path is not None

    @property
    def journal_directory(self) -> Path | None:
        """Where processes on this store keep their journals (None: no journal, in memory)."""
        return None if self.path is None else self.path.parent / "journal"

    @property
    def backend(self) -> str:
        return "sqlite" if self.path is not None else "memory"

    def migrate(self) -> list[int]:
        """SQLite stores bring their tables up to date when opened: nothing to apply."""
        return []

    def info(self) -> dict[str, Any]:
        """Backend, schema version and how much is stored (``afs store info``)."""
        with self._read() as db:
            counts = {}
            for table in ("events", "deliveries", "attempts", "metrics", "run_state"):
                try:
                    counts[table] = int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
                except sqlite3.OperationalError:  # a store written before the table was
                    counts[table] = 0
            pending = db.execute("SELECT COUNT(*) FROM deliveries WHERE status = ?", (PENDING,)).fetchone()[0]
        return {"backend": self.backend, "path": None if self.path is None else str(self.path),
                "schema_version": None, "pending": int(pending),  # tables made as they are needed
                "counts": counts}

    def reserve(self, target: str, per_second: float, burst: float) -> float | None:
        """Pacing shared with other processes: None here, each worker paces itself."""
        return None

    def throttle(self, channel: str, event_type: str, run_id: str, window: float) -> tuple[bool, int] | None:
        """Throttle counts shared with other processes: None here, each worker keeps its own."""
        return None

    def take_held(self, channel: str, event_type: str, run_id: str) -> int | None:
        """See :meth:`throttle`: None here."""
        return None

    # -- connections ---------------------------------------------------------------

    def _create(self) -> None:
        if self.path is None:
            # One connection for every thread, one thread at a time: an in-memory
            # database exists once per connection.
            self._memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            self._memory.execute("PRAGMA foreign_keys=ON")
            self._ordered = _prepare(self._memory)
            return
        if self.read_only:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        generation = self._generation
        try:
            self._db()  # made ready as it connects
        except sqlite3.DatabaseError as exc:
            if not is_damage(exc):
                raise
            self._recover(exc, generation)

    def _connect(self) -> sqlite3.Connection:
        assert self.path is not None
        if self.read_only:
            return self._connect_read_only()
        if not os.path.exists(self.path):
            _create_private(self.path)
        self._local.inode = os.stat(self.path).st_ino
        wait = getattr(self._local, "patience", None) or 30.0
        db = sqlite3.connect(self.path, timeout=wait, isolation_level=None, check_same_thread=False)
        try:
            # The settings in one script: each statement lets the GIL go and takes it back
            # once, where execute() does twice, and every engine thread connects as it starts.
            if self.shared_filesystem:
                _journal_mode(db, "delete", wait)
                db.executescript("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=30000;")
            else:
                _journal_mode(db, "wal", wait)
                # A small WAL, checkpointed often: on a nearly full disk a large one could
                # take the last space and never be checkpointed.
                db.executescript("PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=256;"
                                 " PRAGMA journal_size_limit=1048576; PRAGMA foreign_keys=ON;"
                                 " PRAGMA busy_timeout=30000;")
            if self._prepared != self._local.inode:
                # A file not made ready by this process: at the start, or one another
                # process put in place of a damaged one (an older afs-core's lacks the
                # columns this one writes).
                self._ordered = _prepare(db)
                self._prepared = self._local.inode
        except BaseException:
            db.close()
            raise
        return db

    def _connect_read_only(self) -> sqlite3.Connection:
        assert self.path is not None
        self._local.inode = os.stat(self.path).st_ino
        for mode in ("mode=ro", "immutable=1"):  # immutable: no -shm can be made beside it
            db = sqlite3.connect(f"file:{self.path}?{mode}", uri=True, timeout=30.0, isolation_level=None,
                                 check_same_thread=False)
            try:
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.Error:
                db.close()
                if mode == "immutable=1":
                    raise
                continue
            return db
        raise AssertionError("unreachable")

    def _db(self, *, look: bool = True) -> sqlite3.Connection:
        """This thread's connection. ``look`` False: the file is not looked at to see
        whether it was replaced (a transaction looks once it holds the lock)."""
        if self._memory is not None:
            return self._memory
        local = self._local
        db = getattr(local, "db", None)
        # One connection per thread, never across fork, and a new one when the file
        # was replaced (by this process or another that found it damaged).
        if (db is None or local.pid != os.getpid() or local.generation != self._generation
                or (look and self._replaced())):
            if db is not None and local.pid == os.getpid():
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            local.db = None
            db = self._connect()
            local.db, local.pid, local.generation = db, os.getpid(), self._generation
        return db

    def _replaced(self) -> bool:
        assert self.path is not None
        try:
            return bool(os.stat(self.path).st_ino != self._local.inode)
        except OSError:
            return True

    @contextlib.contextmanager
    def _read(self, *, look: bool = True) -> Iterator[sqlite3.Connection]:
        if self._memory is None:
            yield self._db(look=look)
            return
        with self._memory_lock:
            yield self._memory

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error.

        Every transaction here writes; taking the write lock up front lets SQLite's
        busy timeout wait for another writer, where a read-then-write transaction
        would fail at once with a stale snapshot.
        """
        for attempt in range(3):
            # The first try skips _db()'s look at the file: it is looked at below, once
            # the lock is held (each look is a system call, the GIL let go and taken back).
            with self._read(look=attempt > 0) as db:
                db.execute("BEGIN IMMEDIATE")
                if self._memory is None and self._replaced():
                    # The file was replaced (a damaged store) while this waited for its lock:
                    # what it wrote would land in the one set aside. Again, on the new one.
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                    continue
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    # A failed COMMIT (a full disk) may leave the transaction open: end it,
                    # or every later BEGIN on this connection fails.
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                    raise
                return
        raise sqlite3.OperationalError("the store was replaced again and again while waiting for it")

    @contextlib.contextmanager
    def patience(self, seconds: float) -> Iterator[None]:
        """Wait at most ``seconds`` for another process's lock on this thread's calls
        inside the block (30 s otherwise): for calls on training code's thread."""
        if self._memory is not None:
            yield
            return
        self._local.patience = seconds  # a first call on this thread connects within it too
        try:
            db = self._db()
        finally:
            self._local.patience = None
        db.execute(f"PRAGMA busy_timeout = {max(int(seconds * 1000), 0)}")
        try:
            yield
        finally:
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA busy_timeout = 30000")

    def _quick(self) -> contextlib.AbstractContextManager[None]:
        return self.patience(0.5)

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- damage ----------------------------------------------------------------------

    def check(self) -> bool:
        """Run SQLite's quick integrity check; a damaged store is replaced. True when
        the store was sound (or in memory)."""
        if self.path is None:
            return True
        generation = self._generation
        try:
            with self._read() as db:
                verdict = db.execute("PRAGMA quick_check(1)").fetchone()
        except sqlite3.DatabaseError as exc:
            if not is_damage(exc):
                raise
            self._recover(exc, generation)
            return False
        if verdict is None or verdict[0] != "ok":
            self._recover(sqlite3.DatabaseError(f"integrity check: {verdict[0] if verdict else 'no answer'}"),
                          generation)
            return False
        return True

    def _recover(self, exc: BaseException, generation: int) -> None:
        """Keep the damaged file aside (never deleted) and put in its place a fresh store
        holding what could still be read from it, in one step: processes that have the
        store open never see it empty or half made.

        The fresh store is a new file (``afs.db.r<time>``) that ``afs.db`` then names
        through a symbolic link. SQLite names a store's -wal and -shm after the file the
        link points to, so the damaged file keeps its own -wal (commits of processes
        still on it, not yet in the file) until the swap: a recovery killed before it
        leaves the damaged store as whole as it found it, for the next one.
        """
        from afs_core.delivery.salvage import openable, salvage

        assert self.path is not None
        path = self.path
        with self._recover_lock:
            if self._generation != generation:
                return  # another thread of this process already replaced it
            damaged_inode = getattr(self._local, "inode", None)
            self.close()
            with _directory_lock(path.parent):
                try:
                    current: int | None = os.stat(path).st_ino
                except FileNotFoundError:
                    current = None
                if current is not None and damaged_inode is not None and current != damaged_inode:
                    self._generation += 1
                    return  # another process found it first and replaced it
                damaged = Path(os.path.realpath(path))
                _remove_leftovers(path, keep=damaged)  # of a recovery that was killed midway
                fresh = path.with_name(f"{path.name}.r{time.time_ns()}")
                _create_private(fresh)
                # Whatever opens the damaged file by hand does so before its write lock is
                # taken: closing that descriptor would drop the lock.
                aside = _keep_aside(damaged, path, self.clock.time())
                readable = openable(path) if current is not None else None
                with _holding_write_lock(path) as _, contextlib.closing(
                        sqlite3.connect(fresh, isolation_level=None)) as db:
                    # Writers elsewhere wait for the lock, then find the file replaced and
                    # write to the fresh one; nothing lands after the salvage read it.
                    db.execute("PRAGMA journal_mode=DELETE")  # one file, no WAL to carry over
                    _prepare(db)
                    events, pending = salvage(path, db, readable) if readable is not None else (0, 0)
                    fill_delivery_times(db)  # the damaged file's deliveries may be an older AFS's
                    db.close()
                    _put_in_place(fresh, path, damaged)
                    if damaged != path:
                        damaged.unlink(missing_ok=True)  # an earlier fresh file; kept aside
                self._generation += 1
        logger.warning(
            "afs: the store %s was damaged (%s); it was kept as %s and a fresh store started with what could be "
            "read back: %d events, %d deliveries still pending", path, exc, aside.name, events, pending,
        )

    # -- writing -------------------------------------------------------------------

    @staticmethod
    def _put(db: sqlite3.Connection, event: Mapping[str, Any], channels: Iterable[str], *, created: float,
             not_before: float, updated: float, dedup_key: str | None = None, ranks: str | None = None,
             attempts: Mapping[str, int] | None = None) -> None:
        """Insert an event and a pending delivery per channel (``attempts`` made already,
        by channel); what is there is kept. The event's metrics are recorded, and an
        end-of-run event gets its run's loss curve (:mod:`afs_core.delivery.metrics`)."""
        rows = _Rows()
        rows.add_metrics(metrics.rows_from_event(event, created))
        rows.write(db)  # before the curve is drawn: the event's own values are on it
        rows.add(_with_loss_curve(db, event), channels, created=created, not_before=not_before, updated=updated,
                 dedup_key=dedup_key, ranks=ranks, attempts=attempts)
        rows.write(db)

    @_survives_damage
    def enqueue(
        self,
        event: NotificationEvent,
        channels: Sequence[str],
        *,
        not_before: float | None = None,
        dedup_key: str | None = None,
    ) -> None:
        """Persist ``event`` and one pending delivery per channel, in one transaction."""
        now = self.clock.time()
        ranks = str(event.source.rank) if dedup_key and event.source.rank is not None else None
        with self._transaction() as db:
            self._put(db, event.to_dict(), channels, created=now, not_before=not_before or now, updated=now,
                      dedup_key=dedup_key, ranks=ranks)

    @_survives_damage
    def ingest(self, records: Sequence[Mapping[str, Any]], marks: Mapping[str, int] | None = None,
               joined: dict[str, str] | None = None, *, metric_rows: Iterable[MetricRow] = ()) -> set[str]:
        """Move journal records into the store (idempotent); returns the channels touched.

        ``marks`` (journal file name: bytes of it now stored) are written in the same
        transaction, so whoever takes in a stopped process's journal starts where the
        store left off: an event stored, delivered and since pruned is never stored again.

        A record with ``merge`` (a rank's failure that found the store busy on the
        caller's thread: ``{"key", "since", "rank"}``) is joined or stored here as
        :meth:`enqueue_or_join` would have; ``joined`` is told which joined what
        (event id: id of the event it joined).

        ``metric_rows`` (``log_metrics`` values) go in first, in the same transaction:
        an end-of-run event among ``records`` is drawn with them.
        """
        now = self.clock.time()
        touched: set[str] = set()
        if joined is not None:
            joined.clear()  # of a try that was rolled back
        with self._transaction() as db:
            _record(db, metric_rows)
            db.executemany(
                "INSERT INTO journal_marks (name, offset, updated) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET offset = MAX(offset, excluded.offset), updated = excluded.updated",
                [(name, offset, now) for name, offset in (marks or {}).items()],
            )
            rows = _Rows()  # plain records, written together (see _insert_rows)
            for record in records:
                event = record.get("event") or {}
                if not isinstance(event, Mapping) or not event:
                    continue  # not an event's line (metric rows are taken apart before)
                channels = [c for c in record.get("channels") or [] if isinstance(c, str)]
                at = record.get("at", now)
                attempts = record.get("attempts")
                try:
                    key, since, rank = _merge_of(record)
                    if key is None and not _curved(event):
                        rows.add_metrics(metrics.rows_from_event(event, at))
                        rows.add(event, channels, created=at, not_before=record.get("not_before") or at, updated=now,
                                 attempts=attempts if isinstance(attempts, dict) else None)
                        touched.update(channels)
                        if len(rows.events) >= _ROWS_HELD:  # a backlog's text is not all held at once
                            rows.write(db)
                        continue
                    rows.write(db)  # what came before this one goes in first, in order
                    if key is not None and db.execute("SELECT 1 FROM events WHERE event_id = ?",
                                                      (event["event_id"],)).fetchone() is None:
                        into = self._join(db, key, rank, since)
                        if into is not None:
                            if joined is not None:
                                joined[event["event_id"]] = into
                            continue
                    self._put(db, event, channels, created=at, not_before=record.get("not_before") or at, updated=now,
                              attempts=attempts if isinstance(attempts, dict) else None, dedup_key=key,
                              ranks=None if key is None or rank is None else str(rank))
                except (KeyError, TypeError, ValueError, AttributeError, sqlite3.IntegrityError,
                        sqlite3.InterfaceError):
                    continue  # a damaged line: nothing to deliver from it
                touched.update(channels)
            rows.write(db)
        return touched

    def enqueue_or_join(
        self, event: NotificationEvent, channels: Sequence[str], *, dedup_key: str, since: float, not_before: float
    ) -> str | None:
        """In one transaction: join an event with ``dedup_key`` stored after ``since``
        (returning its id), or store this one (returning None). Ranks failing at the
        same moment cannot both store theirs. Waits at most half a second for the
        store (it runs on the caller's thread); raises sqlite3.Error beyond that, and
        when the store is damaged (replacing it is left to the engine's own threads)."""
        now = self.clock.time()
        with self._quick(), self._transaction() as db:
            joined = self._join(db, dedup_key, event.source.rank, since)
            if joined is not None:
                return joined
            ranks = str(event.source.rank) if event.source.rank is not None else None
            self._put(db, event.to_dict(), channels, created=now, not_before=not_before, updated=now,
                      dedup_key=dedup_key, ranks=ranks)
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

    @_survives_damage
    def claim(self, channel: str, owner: str, *, limit: int = 10, lease: float = 60.0,
              skip: Iterable[int] = ()) -> list[Claimed]:
        """Take the lease on up to ``limit`` due deliveries for ``channel`` (not those in ``skip``)."""
        now = self.clock.time()
        skipped = set(skip)
        with self._transaction() as db:
            # Oldest event first: a run's events in the order they happened. Where few
            # are due (retries waiting after an outage) the due ones are found by their
            # due time and sorted; where many are, deliveries_order is walked in order
            # ("+" keeps SQLite off deliveries_due), passing over the ones not yet due.
            walk = self._ordered and db.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM deliveries WHERE channel = ? AND status = ? AND next_attempt <= ?"
                " LIMIT ?)", (channel, PENDING, now, FEW_DUE)).fetchone()[0] >= FEW_DUE
            rows = db.execute(
                "SELECT d.id, d.attempts, d.lease_owner, d.lease_until, e.created, e.data, e.ranks"
                " FROM deliveries d JOIN events e ON e.event_id = d.event_id"
                f" WHERE d.channel = ? AND d.status = ? AND {'+' if walk else ''}d.next_attempt <= ?"
                f" ORDER BY {'d' if self._ordered else 'e'}.created, d.id LIMIT ?",
                (channel, PENDING, now, limit * 4 + len(skipped)),
            ).fetchall()
            claimed: list[Claimed] = []
            for delivery_id, attempts, lease_owner, lease_until, created, data, ranks in rows:
                if delivery_id in skipped:
                    continue
                held = lease_until is not None and lease_until > now and lease_owner != owner
                if held and not _owner_is_dead(lease_owner):
                    continue
                try:
                    event = NotificationEvent.from_dict(json.loads(data))
                except Exception as exc:  # written by another version, or damaged
                    db.execute(
                        "UPDATE deliveries SET status = ?, last_error = ?, lease_owner = NULL, lease_until = NULL,"
                        " updated = ? WHERE id = ?",
                        (DEAD, f"the stored event could not be read: {type(exc).__name__}: {exc}"[:500], now,
                         delivery_id),
                    )
                    continue
                if ranks and "," in ranks:
                    event = event.evolve(context={**event.context, "ranks": ranks.replace(",", ", ")})
                claimed.append(Claimed(delivery_id, channel, attempts, created, event))
                if len(claimed) >= limit:
                    break
            if claimed:  # one statement (one GIL round trip) for the whole claim
                ids = [item.delivery_id for item in claimed]
                db.execute(f"UPDATE deliveries SET lease_owner = ?, lease_until = ?, updated = ?"
                           f" WHERE id IN ({', '.join(['?'] * len(ids))})", (owner, now + lease, now, *ids))
            return claimed

    @_survives_damage
    def finish_many(self, outcomes: Sequence[tuple[int, DeliveryStatus, str | None, float | None]],
                    owner: str) -> list[bool]:
        """Record attempts' outcomes in one transaction: (delivery id, status, error,
        next attempt) each; PENDING with a next attempt schedules a retry. True where
        the lease held (where it was lost, nothing is changed)."""
        now = self.clock.time()
        held: dict[int, bool] = {}
        with self._transaction() as db:
            # Outcomes alike (most often: delivered) go in with one statement per table,
            # as journal records do (see _insert_rows); where SQLite cannot say which rows
            # an UPDATE changed (before 3.35), one by one.
            groups: dict[tuple[DeliveryStatus, str | None, float | None], list[int]] = {}
            for delivery_id, status, error, next_attempt in outcomes:
                group = groups.setdefault((status, error, next_attempt), [])
                if delivery_id not in group:
                    group.append(delivery_id)
            per = MAX_PARAMETERS - 8
            chunks = [(key, ids[start:start + per]) for key, ids in groups.items() for start in range(0, len(ids), per)]
            for (status, error, next_attempt), ids in chunks:
                values = (_WORDS[status], next_attempt if next_attempt is not None else now, error, now)
                if _RETURNING and len(ids) > 1:
                    changed = {row[0] for row in db.execute(
                        "UPDATE deliveries SET status = ?, attempts = attempts + 1, next_attempt = ?, last_error = ?,"
                        " lease_owner = NULL, lease_until = NULL, updated = ?"
                        f" WHERE id IN ({', '.join(['?'] * len(ids))}) AND lease_owner = ? RETURNING id",
                        (*values, *ids, owner))}
                else:
                    changed = {delivery_id for delivery_id in ids if db.execute(
                        "UPDATE deliveries SET status = ?, attempts = attempts + 1, next_attempt = ?, last_error = ?,"
                        " lease_owner = NULL, lease_until = NULL, updated = ? WHERE id = ? AND lease_owner = ?",
                        (*values, delivery_id, owner)).rowcount == 1}
                outcome = "retry" if status is DeliveryStatus.PENDING else _WORDS[status]
                _insert_rows(db, "INSERT INTO attempts (delivery_id, at, outcome, error)", 4,
                             [(delivery_id, now, outcome, error) for delivery_id in ids if delivery_id in changed])
                held.update((delivery_id, delivery_id in changed) for delivery_id in ids)
        done = [held[delivery_id] for delivery_id, _, _, _ in outcomes]
        return done

    @_survives_damage
    def extend(self, delivery_ids: Sequence[int], owner: str, lease: float) -> set[int]:
        """Renew this owner's leases; returns the ids still held (a lost one may be
        sent by someone else)."""
        now = self.clock.time()
        held = set()
        with self._transaction() as db:
            for delivery_id in delivery_ids:
                cursor = db.execute(
                    "UPDATE deliveries SET lease_until = ? WHERE id = ? AND lease_owner = ? AND status = ?",
                    (now + lease, delivery_id, owner, PENDING),
                )
                if cursor.rowcount == 1:
                    held.add(delivery_id)
        return held

    def hand_over(self) -> list[dict[str, Any]]:
        """Take out the pending deliveries nobody is sending, as journal records, to move
        them into another store (from memory back into the file, once it can be written)."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT d.id, d.channel, d.next_attempt, d.attempts, e.event_id, e.created, e.data FROM deliveries d"
                " JOIN events e ON e.event_id = d.event_id WHERE d.status = ? AND d.lease_owner IS NULL"
                " ORDER BY d.id",
                (PENDING,),
            ).fetchall()
            records: dict[str, dict[str, Any]] = {}
            for delivery_id, channel, next_attempt, attempts, event_id, created, data in rows:
                record = records.setdefault(event_id, {"event": json.loads(data), "channels": [], "at": created,
                                                       "not_before": next_attempt, "attempts": {}})
                record["channels"].append(channel)
                record["attempts"][channel] = attempts  # a retry stays a retry: no throttle, the same budget
                record["not_before"] = min(record["not_before"], next_attempt)
                db.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,))
        return list(records.values())

    @_survives_damage
    def make_due(self, channels: Sequence[str]) -> int:
        """Pending deliveries of these channels become due now (``afs outbox flush``)."""
        now = self.clock.time()
        marks = ",".join("?" for _ in channels)
        with self._transaction() as db:
            return db.execute(
                "UPDATE deliveries SET next_attempt = ?"
                f" WHERE status = ? AND next_attempt > ? AND channel IN ({marks})",
                (now, PENDING, now, *channels),
            ).rowcount

    @_survives_damage
    def release(self, delivery_id: int, owner: str) -> None:
        """Give a lease back without an attempt (the worker is stopping)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?",
                (delivery_id, owner),
            )

    @_survives_damage
    def requeue(self, delivery_id: int) -> bool:
        """Make a dead delivery pending again (``afs outbox retry``)."""
        now = self.clock.time()
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE deliveries SET status = ?, next_attempt = ?, attempts = 0, updated = ?"
                " WHERE id = ? AND status = ?",
                (PENDING, now, now, delivery_id, DEAD),
            )
            return cursor.rowcount == 1

    @_survives_damage
    def prune(self, *, max_age: float = 30 * 86400, max_events: int = 10_000,
              max_metrics: int = MAX_METRIC_ROWS, every: float | None = None) -> int:
        """Forget old history: events older than ``max_age`` seconds, and beyond the newest
        ``max_events``, whose deliveries are all finished; recorded metrics older than
        ``max_age`` and beyond the newest ``max_metrics``. Returns how many events went.

        ``every``: nothing is done (0) where any process pruned this store less than
        ``every`` seconds ago with limits at least as strict: a read, where pruning takes
        the write lock and walks the history (every engine prunes as it starts, and runs
        start often)."""
        now = self.clock.time()
        limits = (max_age, max_events, max_metrics)
        if every is not None:
            with self._read() as db:
                row = db.execute("SELECT value FROM run_state WHERE key = ?", (PRUNED_KEY,)).fetchone()
            if pruned_within(row[0] if row else None, now, every, limits):
                return 0
        cutoff = now - max_age
        finished = "NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.event_id AND d.status = 'pending')"
        with self._transaction() as db:
            db.execute("DELETE FROM metrics WHERE at < ?", (cutoff,))
            db.execute("DELETE FROM metrics WHERE rowid <= (SELECT rowid FROM metrics ORDER BY rowid DESC"
                       " LIMIT 1 OFFSET ?)", (max_metrics,))
            removed = db.execute(f"DELETE FROM events WHERE created < ? AND {finished}", (cutoff,)).rowcount
            removed += db.execute(
                f"DELETE FROM events WHERE {finished} AND event_id NOT IN"
                " (SELECT event_id FROM events ORDER BY rowid DESC LIMIT ?)",
                (max_events,),
            ).rowcount
            db.execute(_PUT_STATE, (PRUNED_KEY, prune_record(now, limits), now))
        return removed

    def set_state(self, key: str, value: str) -> None:
        """Remember a small value across processes (a monitor's state, keyed by run).
        Called from training code: waits at most half a second for the store, and
        raises where it is damaged rather than replace it there."""
        with self._quick(), self._transaction() as db:
            db.execute(_PUT_STATE, (key, value, self.clock.time()))

    @_survives_damage
    def journal_mark(self, name: str) -> int:
        """How many bytes of the journal file ``name`` are already in the store."""
        with self._read() as db:
            row = db.execute("SELECT offset FROM journal_marks WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    @_survives_damage
    def forget_journal(self, name: str) -> None:
        """The journal file ``name`` is gone: its mark goes too."""
        with self._transaction() as db:
            db.execute("DELETE FROM journal_marks WHERE name = ?", (name,))

    def forget_state(self, key: str) -> None:
        """Forget what :meth:`set_state` remembered under ``key``; like it, quick or raising."""
        with self._quick(), self._transaction() as db:
            db.execute("DELETE FROM run_state WHERE key = ?", (key,))

    def get_state(self, key: str) -> str | None:
        """What :meth:`set_state` remembered; like it, quick or raising."""
        with self._quick(), self._read() as db:
            row = db.execute("SELECT value FROM run_state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # -- reading -------------------------------------------------------------------

    @_survives_damage
    def has_due(self, channel: str) -> bool:
        """Whether a delivery of ``channel`` is due now, by the clock claims go by: a read
        that finds what a claim would look for, without the write lock."""
        with self._read() as db:
            return db.execute("SELECT 1 FROM deliveries WHERE channel = ? AND status = ? AND next_attempt <= ?"
                              " LIMIT 1", (channel, PENDING, self.clock.time())).fetchone() is not None

    @_survives_damage
    def next_due(self, channel: str) -> float | None:
        with self._read() as db:
            row = db.execute(
                "SELECT MIN(next_attempt) FROM deliveries WHERE channel = ? AND status = ?", (channel, PENDING)
            ).fetchone()
        return row[0] if row and row[0] is not None else None

    @_survives_damage
    def pending(self, channels: Sequence[str], due_by: float | None = None) -> PendingSummary:
        """Pending deliveries of ``channels``: how many, how many fall due by ``due_by``
        (all when None), and the earliest due time of the others."""
        if not channels:
            return PendingSummary(0, 0, None)
        marks = ",".join("?" for _ in channels)
        by = float("inf") if due_by is None else due_by
        with self._read() as db:
            total, due, after = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(next_attempt <= ?), 0),"
                " MIN(CASE WHEN next_attempt > ? THEN next_attempt END)"
                f" FROM deliveries WHERE status = ? AND channel IN ({marks})",
                (by, by, PENDING, *channels),
            ).fetchone()
        return PendingSummary(int(total), int(due), after)

    @_survives_damage
    def statuses(self, delivery_ids: Sequence[int]) -> dict[DeliveryStatus, int]:
        """How many of these deliveries are in each status now."""
        found: dict[DeliveryStatus, int] = {}
        with self._read() as db:
            for start in range(0, len(delivery_ids), 500):
                chunk = delivery_ids[start : start + 500]
                marks = ",".join("?" for _ in chunk)
                for word, number in db.execute(
                    f"SELECT status, COUNT(*) FROM deliveries WHERE id IN ({marks}) GROUP BY status", chunk
                ).fetchall():
                    found[_status(word)] = found.get(_status(word), 0) + number
        return found

    @_survives_damage
    def counts(self) -> dict[str, ChannelCounts]:
        """Per channel: how many deliveries are pending and dead."""
        found: dict[str, dict[str, int]] = {}
        with self._read() as db:
            for channel, word, number in db.execute(
                "SELECT channel, status, COUNT(*) FROM deliveries WHERE status IN (?, ?) GROUP BY channel, status",
                (PENDING, DEAD),
            ).fetchall():
                found.setdefault(channel, {})[word] = number
        return {channel: ChannelCounts(**numbers) for channel, numbers in found.items()}

    @_survives_damage
    def metric_series(self, run_id: str, *, max_points: int = metrics.SERIES_POINTS) -> dict[str, list[MetricPoint]]:
        """The run's recorded metrics by name, oldest first, each downsampled to at most
        ``max_points`` (minima, maxima, first and last kept)."""
        with self._read() as db:
            names = [name for (name,) in db.execute(
                "SELECT DISTINCT name FROM metrics WHERE run_id = ? ORDER BY name", (run_id,))]
            return {name: metrics.downsample(_series(db, run_id, name, max_points), max_points) for name in names}

    @_survives_damage
    def history(self, *, run_id: str | None = None, limit: int = 50) -> list[HistoryEntry]:
        """The newest events first, each with its deliveries."""
        query = "SELECT event_id, created, run_id, event_type, level, title, data FROM events"
        args: list[Any] = []
        if run_id is not None:
            query += " WHERE run_id = ?"
            args.append(run_id)
        query += " ORDER BY rowid DESC LIMIT ?"
        args.append(limit)
        entries = []
        with self._read() as db:
            for event_id, created, run, event_type, level, title, data in db.execute(query, args).fetchall():
                rows = db.execute(
                    "SELECT channel, status, attempts, last_error, next_attempt FROM deliveries WHERE event_id = ?"
                    " ORDER BY channel",
                    (event_id,),
                ).fetchall()
                try:
                    event = json.loads(data)
                except ValueError:
                    event = {}
                event = event if isinstance(event, dict) else {}
                deliveries = tuple(DeliveryRow(c, _status(st), a, e, n) for c, st, a, e, n in rows)
                entries.append(HistoryEntry(event_id, created, run, event_type, level, title, deliveries,
                                            event.get("model_name"), event))
        return entries

    @_survives_damage
    def outcomes(self, event_id: str) -> dict[str, tuple[DeliveryStatus, str | None]]:
        """Per channel, where the event's deliveries stand: status and last error."""
        with self._read() as db:
            rows = db.execute("SELECT channel, status, last_error FROM deliveries WHERE event_id = ?",
                              (event_id,)).fetchall()
        return {channel: (_status(status), error) for channel, status, error in rows}

    @_survives_damage
    def outbox(self, statuses: Iterable[DeliveryStatus] = (DeliveryStatus.PENDING, DeliveryStatus.FAILED),
               limit: int = 200) -> list[OutboxEntry]:
        """Pending and dead deliveries, oldest first."""
        wanted = tuple(_WORDS[status] for status in statuses)
        marks = ",".join("?" for _ in wanted)
        with self._read() as db:
            rows = db.execute(
                "SELECT d.id, d.channel, d.status, e.title, d.attempts, d.last_error, d.next_attempt, e.run_id"
                f" FROM deliveries d JOIN events e ON e.event_id = d.event_id WHERE d.status IN ({marks})"
                " ORDER BY d.id LIMIT ?",
                (*wanted, limit),
            ).fetchall()
        return [OutboxEntry(d, c, _status(st), t, a, e, n, r) for d, c, st, t, a, e, n, r in rows]

    @_survives_damage
    def runs(self, *, limit: int = 200, metrics_since: float | None = None, run_id: str | None = None
             ) -> list[RunSummary]:
        """The runs in the history (or the one ``run_id``), the most recently active first.
        Read from the indexes and a run's few start, end and failure events, never every
        event's text; ``metrics_since``: metrics recorded after it count as activity."""
        facts = ",".join("?" for _ in _RUN_FACT_EVENTS)
        runs = []
        which = "run_id IS NOT NULL" if run_id is None else "run_id = ?"
        with self._read() as db:
            rows = db.execute(
                f"SELECT run_id, MIN(created), MAX(created), COUNT(*) FROM events WHERE {which}"
                " GROUP BY run_id ORDER BY MAX(created) DESC LIMIT ?", (*([] if run_id is None else [run_id]), limit),
            ).fetchall()
            recent: dict[str, float] = {}
            if metrics_since is not None:
                with contextlib.suppress(sqlite3.OperationalError):  # a store written before metrics were
                    recent = dict(db.execute("SELECT run_id, MAX(at) FROM metrics WHERE at > ? AND run_id IS NOT NULL"
                                             " GROUP BY run_id", (metrics_since,)).fetchall())
            for run, started, last, count in rows:
                told = db.execute(
                    f"SELECT event_type, created, ranks, {_FACT_COLUMNS} FROM events"
                    f" WHERE run_id = ? AND event_type IN ({facts}) ORDER BY created", (run, *_RUN_FACT_EVENTS),
                ).fetchall()
                ends = db.execute(
                    f"SELECT event_type, created, ranks, {_FACT_COLUMNS} FROM events WHERE event_id IN"
                    " (SELECT event_id FROM events WHERE run_id = ? ORDER BY created LIMIT 1)"
                    " OR event_id IN (SELECT event_id FROM events WHERE run_id = ? ORDER BY created DESC LIMIT 1)"
                    " OR event_id IN (SELECT event_id FROM events WHERE run_id = ? AND event_type = ?"
                    " ORDER BY created DESC LIMIT 1)",
                    (run, run, run, "cost_threshold_exceeded")).fetchall()
                runs.append(_run_summary(run, started, max(last, recent.get(run, last)), count,
                                         [_facts(row) for row in (*ends, *told)]))
        return runs

    @_survives_damage
    def run_events(self, run_id: str, *, limit: int = 500, before: float | None = None) -> list[RunEvent]:
        """A run's events, newest first (``before``: older than that time), each with
        its deliveries and every try of them."""
        query = "SELECT event_id, created, event_type, level, title, data FROM events WHERE run_id = ?"
        args: list[Any] = [run_id]
        if before is not None:
            query += " AND created < ?"
            args.append(before)
        with self._read() as db:
            rows = db.execute(query + " ORDER BY created DESC, rowid DESC LIMIT ?", (*args, limit)).fetchall()
            ids = [row[0] for row in rows]
            deliveries: dict[str, list[tuple[Any, ...]]] = {}
            tries: dict[int, list[Attempt]] = {}
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" for _ in chunk)
                for row in db.execute(
                    "SELECT event_id, id, channel, status, attempts, last_error, next_attempt FROM deliveries"
                    f" WHERE event_id IN ({marks}) ORDER BY channel", chunk,
                ).fetchall():
                    deliveries.setdefault(row[0], []).append(row[1:])
            delivery_ids = [row[0] for rows_of in deliveries.values() for row in rows_of]
            for start in range(0, len(delivery_ids), 500):
                chunk = delivery_ids[start : start + 500]
                marks = ",".join("?" for _ in chunk)
                for delivery_id, at, outcome, error in db.execute(
                    f"SELECT delivery_id, at, outcome, error FROM attempts WHERE delivery_id IN ({marks})"
                    " ORDER BY at, rowid", chunk,
                ).fetchall():
                    tries.setdefault(delivery_id, []).append(Attempt(at, outcome, error))
        events = []
        for event_id, created, event_type, level, title, data in rows:
            try:
                event = json.loads(data)
            except ValueError:
                event = {}
            details = tuple(DeliveryDetail(d, c, _status(st), a, e, n, tuple(tries.get(d, ())))
                            for d, c, st, a, e, n in deliveries.get(event_id, ()))
            events.append(RunEvent(event_id, created, event_type, level, title,
                                   event if isinstance(event, dict) else {}, details))
        return events

    @_survives_damage
    def run_costs(self, run_id: str) -> list[tuple[float, float]]:
        """(time, cost so far) for each of the run's events that carried a cost, oldest first."""
        with self._read() as db:
            rows = db.execute(
                f"SELECT created, {_field('$.cost')} AS cost, CASE WHEN json_valid(data) THEN NULL ELSE data END"
                " AS text FROM events WHERE run_id = ? AND (cost IS NOT NULL OR text IS NOT NULL) ORDER BY created",
                (run_id,)).fetchall()
        found = []
        for at, cost, text in rows:
            if text is not None:  # an older row SQLite cannot read (bare NaN): read here
                cost = _fields_of(text)[_FACT_PATHS.index("cost")]
            if isinstance(cost, (int, float)) and not isinstance(cost, bool):
                found.append((float(at), float(cost)))
        return found

    @_survives_damage
    def last_change(self) -> tuple[int, int, int]:
        """Marks that move whenever an event, a try of a delivery or a metric is stored
        (the dashboard polls them): cheap, read from the tables' ends."""
        with self._read() as db:
            marks = [db.execute(f"SELECT COALESCE(MAX(rowid), 0) FROM {table}").fetchone()[0]
                     for table in ("events", "attempts")]
            try:
                marks.append(db.execute("SELECT COALESCE(MAX(rowid), 0) FROM metrics").fetchone()[0])
            except sqlite3.OperationalError:  # a store written before metrics were
                marks.append(0)
        return int(marks[0]), int(marks[1]), int(marks[2])

    @_survives_damage
    def channel_failures(self, *, limit: int = 200) -> list[ChannelFailure]:
        """The newest failed tries of every channel, newest first."""
        with self._read() as db:
            rows = db.execute(
                "SELECT a.at, d.channel, a.outcome, a.error, d.id, e.title, e.run_id FROM attempts a"
                " JOIN deliveries d ON d.id = a.delivery_id JOIN events e ON e.event_id = d.event_id"
                " WHERE a.outcome IN ('retry', 'dead') ORDER BY a.at DESC LIMIT ?", (limit,)).fetchall()
        return [ChannelFailure(*row) for row in rows]


def _record(db: sqlite3.Connection, rows: Iterable[MetricRow]) -> None:
    _insert_rows(db, "INSERT OR IGNORE INTO metrics (source, run_id, model_name, name, step, value, at)", 7,
                 list(rows))


def _curved(event: Mapping[str, Any]) -> bool:
    """An end-of-run event: its loss curve is drawn from the store as it goes in."""
    return event.get("event_type") in metrics.CURVED_EVENTS


#: Events gathered before they are written (their text is what memory holds meanwhile).
_ROWS_HELD = 200


class _Rows:
    """Rows for the metrics, events and deliveries tables, gathered and then written
    with one statement per table (see :func:`_insert_rows`). A record whose rows cannot
    be built (a damaged journal line) raises in :meth:`add` and adds nothing."""

    def __init__(self) -> None:
        self.metrics: list[MetricRow] = []
        self.events: list[Sequence[Any]] = []
        self.deliveries: list[Sequence[Any]] = []

    def add_metrics(self, rows: Iterable[MetricRow]) -> None:
        self.metrics.extend(rows)

    def add(self, event: Mapping[str, Any], channels: Iterable[str], *, created: float, not_before: float,
            updated: float, dedup_key: str | None = None, ranks: str | None = None,
            attempts: Mapping[str, int] | None = None) -> None:
        event_id = event["event_id"]
        row = (event_id, created, event.get("run_id"), event["event_type"], event["level"], event["title"],
               dedup_key, ranks, strict_json(event))
        deliveries = [(event_id, channel, PENDING, not_before, int((attempts or {}).get(channel) or 0), updated,
                       created) for channel in channels]
        self.events.append(row)
        self.deliveries.extend(deliveries)

    def write(self, db: sqlite3.Connection) -> None:
        _record(db, self.metrics)
        _insert_rows(db, "INSERT OR IGNORE INTO events (event_id, created, run_id, event_type, level, title,"
                         " dedup_key, ranks, data)", 9, self.events)
        _insert_rows(db, "INSERT OR IGNORE INTO deliveries (event_id, channel, status, next_attempt, attempts,"
                         " updated, created)", 7, self.deliveries)
        self.metrics, self.events, self.deliveries = [], [], []


#: Whether this SQLite says which rows an UPDATE changed (RETURNING, 3.35 and later).
_RETURNING = sqlite3.sqlite_version_info >= (3, 35)
#: Bound parameters in one statement (the oldest SQLite builds allow 999).
MAX_PARAMETERS = 999
# What one bad row raises: a constraint, a value sqlite3 cannot bind (a list where text
# goes: ProgrammingError in Python 3.11, InterfaceError before), an integer past 64 bits.
_WRITE_ERRORS = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError, OverflowError)


def _insert_rows(db: sqlite3.Connection, head: str, width: int, rows: Sequence[Sequence[Any]]) -> None:
    """``head VALUES (...), (...), ...``: a few statements for many rows (each within
    the parameter limit). Each statement is one step, and sqlite3 lets go of the GIL for each step:
    row by row (executemany), the engine's thread had to take the GIL back from a busy
    training thread once per row, each time costing that thread a switch. A row
    SQLite refuses (a damaged journal line) is left out, the rest are written."""
    if not rows:
        return
    # Statements of a power-of-two count of rows: sqlite3 keeps each distinct statement
    # compiled (a long INSERT is a large program), so only a few distinct ones are made.
    most = 1 << (max(1, MAX_PARAMETERS // width).bit_length() - 1)
    one = "(" + ", ".join(["?"] * width) + ")"
    start = 0
    while start < len(rows):
        count = min(most, 1 << ((len(rows) - start).bit_length() - 1))
        chunk = rows[start:start + count]
        start += count
        try:
            db.execute(f"{head} VALUES {', '.join([one] * len(chunk))}", [value for row in chunk for value in row])
        except _WRITE_ERRORS as exc:
            written = 0
            for row in chunk:  # which row it was: each alone
                try:
                    db.execute(f"{head} VALUES {one}", tuple(row))
                    written += 1
                except _WRITE_ERRORS:
                    continue
            if not written and len(chunk) > 1:
                raise exc  # not a damaged row: every one fails (the statement itself)


def strict_json(value: Any) -> str:
    """JSON that every reader takes (SQLite's json functions, browsers): a NaN or an
    infinity (a diverged loss) is written as the text "NaN", "Infinity", "-Infinity"."""
    try:
        return json.dumps(value, separators=(",", ":"), default=str, allow_nan=False)
    except ValueError:
        return json.dumps(metrics.without_nan(value), separators=(",", ":"), default=str, allow_nan=False)


def _series(db: sqlite3.Connection, run_id: str, name: str, limit: int) -> list[MetricPoint]:
    """The series as :func:`metrics.drawable` has it, in at most about ``limit`` points, by
    step (else by time). A long one is cut into buckets in SQLite itself, each giving the
    row of its minimum and of its maximum, so a run of a million steps costs no Python
    loop over them."""
    where = "run_id = ? AND name = ? AND value IS NOT NULL"
    count, stepped, low_step, high_step, first_at, last_at = db.execute(
        f"SELECT COUNT(*), COUNT(step), MIN(step), MAX(step), MIN(at), MAX(at) FROM metrics WHERE {where}",
        (run_id, name)).fetchone()
    if not count:
        return []
    if stepped:  # points without a step are an event's copy of a value: left out
        where += " AND step IS NOT NULL"
        axis, low, high = "step", low_step, high_step
    else:
        axis, low, high = "at", first_at, last_at
    order = f"ORDER BY {axis}, at, rowid"
    if (stepped or count) <= limit:
        rows = db.execute(f"SELECT step, value, at FROM metrics WHERE {where} {order}", (run_id, name)).fetchall()
    else:
        buckets = max((limit - 2) // 2, 1)
        width = (high - low) / buckets or 1.0
        found = set()
        for pick in ("MIN", "MAX"):  # SQLite: the other columns come from the row of the min/max
            found.update(db.execute(
                f"SELECT step, {pick}(value), at FROM metrics WHERE {where}"
                f" GROUP BY CAST(({axis} - ?) / ? AS INTEGER)", (run_id, name, low, width)).fetchall())
        for end in ("", " DESC"):
            found.update(db.execute(f"SELECT step, value, at FROM metrics WHERE {where} ORDER BY {axis}{end},"
                                    f" at{end} LIMIT 1", (run_id, name)).fetchall())
        key = (lambda r: (r[0], r[2])) if stepped else (lambda r: (r[2], 0))
        rows = sorted(found, key=key)
    return [MetricPoint(step, value, at) for step, value, at in rows]


def _with_loss_curve(db: sqlite3.Connection, event: Mapping[str, Any]) -> Mapping[str, Any]:
    """``event`` with its run's loss curve in ``context["loss_curve"]`` when it is an
    end-of-run event and the run recorded a loss (what the caller put there is kept)."""
    run_id, context = event.get("run_id"), event.get("context")
    if (event.get("event_type") not in metrics.CURVED_EVENTS or not isinstance(run_id, str)
            or not isinstance(context, Mapping) or "loss_curve" in context):
        return event
    names = [name for (name,) in db.execute("SELECT DISTINCT name FROM metrics WHERE run_id = ?", (run_id,))]
    name = metrics.loss_name(names)
    if name is None:
        return event
    pairs = metrics.curve_pairs(metrics.downsample(_series(db, run_id, name, metrics.CURVE_POINTS),
                                                   metrics.CURVE_POINTS))
    if len(pairs) < 2:
        return event
    return {**event, "context": {**context, "loss_curve": pairs}}


def _field(path: str) -> str:
    """SQL for an event's field at ``path``: NULL where the stored text is not valid JSON
    (older versions stored NaN and Infinity bare), where SQLite's json_extract would fail
    the whole query."""
    return f"CASE WHEN json_valid(data) THEN json_extract(data, '{path}') END"


#: What a run's summary reads of an event: these fields, then its text where SQLite cannot read it.
_FACT_PATHS = ("model_name", "source.host", "source.rank", "cost", "context.duration")
_FACT_COLUMNS = ", ".join([*(_field(f"$.{path}") for path in _FACT_PATHS),
                           "CASE WHEN json_valid(data) THEN NULL ELSE data END"])


def _facts(row: Sequence[Any]) -> tuple[Any, ...]:
    """(event_type, created, ranks, *fields) from a row selected with ``_FACT_COLUMNS``."""
    *known, text = row
    return tuple(known) if text is None else (*known[:3], *_fields_of(text))


def _fields_of(text: str) -> tuple[Any, ...]:
    """``_FACT_PATHS`` of an event SQLite could not read (bare NaN), read as Python reads it."""
    try:
        event = json.loads(text)
    except ValueError:
        return tuple(None for _ in _FACT_PATHS)
    found = []
    for path in _FACT_PATHS:
        value = event
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        found.append(value if isinstance(value, (str, int, float)) else None)
    return tuple(found)


def _run_summary(run_id: str, started: float, last_seen: float, count: int,
                 told: Sequence[tuple[Any, ...]]) -> RunSummary:
    """A run from its first and last events and those that tell how it stands (oldest first)."""
    model, state, state_at, cost, duration = None, None, None, None, None
    hosts: dict[str, None] = {}
    ranks: set[int] = set()
    for event_type, created, merged, model_name, host, rank, event_cost, event_duration in sorted(
            told, key=lambda row: row[1]):
        model = model or model_name
        if host:
            hosts[str(host)] = None
        if isinstance(rank, int):
            ranks.add(rank)
        ranks.update(int(r) for r in (merged or "").split(",") if r.strip().isdigit())
        if isinstance(event_cost, (int, float)):
            cost = float(event_cost)  # the newest cost told
        if event_type in RUN_STATE_EVENTS:
            state, state_at = event_type, created
            duration = float(event_duration) if isinstance(event_duration, (int, float)) else None
    return RunSummary(run_id, model, tuple(hosts), tuple(sorted(ranks)), started, last_seen, state, state_at, count,
                      cost, duration)


def _merge_of(record: Mapping[str, Any]) -> tuple[str | None, float, int | None]:
    """A journal record's ``merge`` (see :meth:`Store.ingest`): its key, since when, and
    the rank; no key for a record without one (or with a damaged one)."""
    merge = record.get("merge")
    if not isinstance(merge, Mapping):
        return None, 0.0, None
    key, since, rank = merge.get("key"), merge.get("since"), merge.get("rank")
    if not isinstance(key, str) or not key or not isinstance(since, (int, float)):
        return None, 0.0, None
    return key, float(since), rank if isinstance(rank, int) and not isinstance(rank, bool) else None


def _journal_mode(db: sqlite3.Connection, mode: str, wait: float) -> None:
    """Set the journal mode, waiting (at most ``wait``, 10 s) while processes starting
    together hold the lock the change needs: SQLite answers 'locked' at once there."""
    deadline = time.monotonic() + min(wait, 10.0)
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != mode:
                db.execute(f"PRAGMA journal_mode={mode}")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _keep_aside(damaged: Path, path: Path, now: float) -> Path:
    """Keep the damaged store file (and its -wal/-journal) as ``<name>.corrupt-<time>``
    beside ``path``, by a second name (a copy where there are no hard links): nothing
    moves yet. Its -shm is SQLite's index of the -wal, rebuilt from it on opening."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    number = 1
    while aside.exists():
        number += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{number}")
    for suffix in ("", "-wal", "-journal"):
        source, target = f"{damaged}{suffix}", f"{aside}{suffix}"
        if not os.path.exists(source):
            continue
        try:
            os.link(source, target)
        except OSError:  # a filesystem without hard links
            import shutil

            shutil.copy2(source, target)
    return aside


def _create_private(path: Path) -> None:
    """Create the store file 0600 before SQLite opens it (SQLite gives its -wal and -shm
    files the same permissions). Only a file that did not exist is opened by hand:
    closing any descriptor of the store file drops every lock SQLite holds on it in
    this process (POSIX record locks belong to the process), and another process that
    then finds no lock takes itself for the last one and deletes the -wal in use."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def _put_in_place(fresh: Path, path: Path, damaged: Path) -> None:
    """Make ``path`` name the fresh store, atomically: a symbolic link to it, or (where
    links cannot be made) the file itself. The damaged file's -wal and -shm go once no
    fresh connection can take them for its own."""
    link = path.with_name(f"{path.name}.link-{os.getpid()}")
    try:
        link.unlink(missing_ok=True)
        os.symlink(fresh.name, link)
    except (OSError, NotImplementedError):
        link.unlink(missing_ok=True)
        _remove_wal_and_shm(damaged)  # first: the fresh file takes the damaged one's name, and so these
        os.replace(fresh, path)
        return
    os.replace(link, path)
    _remove_wal_and_shm(damaged)


def _remove_wal_and_shm(store_file: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{store_file}{suffix}").unlink(missing_ok=True)


def _remove_leftovers(path: Path, keep: Path) -> None:
    """Fresh files and links a killed recovery left, never the file ``path`` names."""
    for leftover in path.parent.glob(f"{path.name}.*"):
        name = leftover.name
        base = name.removesuffix("-wal").removesuffix("-shm").removesuffix("-journal")
        fresh_file = base.startswith(f"{path.name}.r") and base != keep.name
        if fresh_file or name.startswith((f"{path.name}.link-", f"{path.name}.new-")):
            leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def _holding_write_lock(path: Path) -> Iterator[None]:
    """Hold the store's write lock (when the damaged file still allows one)."""
    try:
        db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    except sqlite3.Error:
        yield
        return
    try:
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error:
            pass  # too damaged to lock: too damaged for anyone to write to as well
        yield
    finally:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        db.close()


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """Processes on this host replacing a damaged store do it one at a time."""
    try:
        import fcntl
    except ImportError:  # Windows: a file in use cannot be renamed there anyway
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
