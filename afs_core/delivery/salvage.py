"""Reading back what can still be read from a damaged store.

A store that SQLite calls malformed (a machine that crashed mid-write, a file cut
short) is moved aside, never deleted; the rows that can still be read from it are
copied into the fresh store, so pending deliveries still go out and history keeps
what survived. Reading skips past pages that fail, within a bounded effort.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger("afs.store")

# Table, columns copied. Deliveries keep their leases: a live owner is still sending
# them, and a dead one's lease is taken over as in any store.
_TABLES = (
    ("events", ("event_id", "created", "run_id", "event_type", "level", "title", "dedup_key", "ranks", "data")),
    ("deliveries", ("id", "event_id", "channel", "status", "attempts", "next_attempt", "lease_owner", "lease_until",
                    "last_error", "updated")),
    ("attempts", ("delivery_id", "at", "outcome", "error")),
    ("run_state", ("key", "value", "updated")),
    ("journal_marks", ("name", "offset", "updated")),
)
MAX_SKIPS = 400  # read failures tolerated per table before giving up on the rest of it
MAX_STEP = 4096  # rowids stepped over at once through a damaged run


MAX_PROBES = 20_000  # rowids looked up one by one inside damaged runs, per table
HEADER = b"SQLite format 3\x00"


def _readable_rows(db: sqlite3.Connection, table: str, columns: tuple[str, ...]) -> Iterator[tuple[Any, ...]]:
    """Rows of ``table`` in rowid order, stepping over the ones that cannot be read.

    A scan that fails jumps ahead in ever larger steps until it reads again; the rowids
    it jumped over are then looked up one by one, since a damaged page seldom takes
    its neighbours with it.
    """
    columns_text = ", ".join(columns)
    scan = f"SELECT rowid, {columns_text} FROM {table} WHERE rowid > ? ORDER BY rowid"
    lookup = f"SELECT rowid, {columns_text} FROM {table} WHERE rowid = ?"
    last, step, skips, probes = 0, 1, 0, 0
    gap: int | None = None  # the last rowid read before a damaged run

    def inside(low: int, high: int) -> Iterator[tuple[Any, ...]]:
        nonlocal probes
        for rowid in range(low + 1, high):
            if probes >= MAX_PROBES:
                return
            probes += 1
            try:
                found = db.execute(lookup, (rowid,)).fetchone()
            except sqlite3.DatabaseError:
                continue
            if found is not None:
                yield found[1:]

    while skips < MAX_SKIPS:
        try:
            for row in db.execute(scan, (last,)):
                if gap is not None:
                    yield from inside(gap, row[0])
                    gap = None
                last, step = row[0], 1
                yield row[1:]
            return
        except sqlite3.DatabaseError:
            if gap is None:
                gap = last
            skips += 1
            last += step
            step = min(step * 2, MAX_STEP)
    if gap is not None:
        yield from inside(gap, last + 1)


def openable(damaged: Path) -> Path:
    """``damaged``, or a copy with a rebuilt header when its first bytes were lost (the
    tables behind them are often whole): the page size that divides the file and
    lets SQLite read the schema is the one it had."""
    try:  # asked of SQLite first: closing a descriptor of our own would drop its locks on the file
        with contextlib.closing(sqlite3.connect(f"file:{damaged}?mode=ro", uri=True, timeout=1.0)) as probe:
            probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return damaged
    except sqlite3.Error:
        pass
    try:
        with open(damaged, "rb") as handle:
            if handle.read(len(HEADER)) == HEADER:
                return damaged
            handle.seek(0)
            data = handle.read()
    except OSError:
        return damaged
    for page_size in (4096, 1024, 2048, 8192, 16384, 32768, 65536, 512):
        if not data or len(data) % page_size:
            continue
        repaired = damaged.with_name(f"{damaged.name}.header-{page_size}")
        try:
            template = repaired.with_name(repaired.name + ".template")
            template.unlink(missing_ok=True)
            with contextlib.closing(sqlite3.connect(template)) as made:
                made.execute(f"PRAGMA page_size = {page_size}")
                made.execute("CREATE TABLE t (x)")
                made.commit()
            header = bytearray(template.read_bytes()[:100])
            template.unlink(missing_ok=True)
            header[28:32] = b"\0\0\0\0"  # page count unknown: SQLite then counts the file
            repaired.write_bytes(bytes(header) + data[100:])
            with contextlib.closing(sqlite3.connect(f"file:{repaired}?mode=ro", uri=True)) as probe:
                probe.execute("PRAGMA writable_schema=ON")
                if probe.execute("SELECT count(*) FROM sqlite_master WHERE name = 'events'").fetchone()[0]:
                    return repaired
        except (OSError, sqlite3.Error):
            pass
        repaired.unlink(missing_ok=True)
    return damaged


def salvage(damaged: Path, target: sqlite3.Connection, readable: Path | None = None) -> tuple[int, int]:
    """Copy the readable rows of ``damaged`` into ``target`` (an open, empty store);
    ``readable`` is what :func:`openable` made of it, when the caller asked already.

    Returns (events, pending deliveries) recovered. Never raises for what it reads.
    """
    if readable is None:
        readable = openable(damaged)
    try:
        source = sqlite3.connect(f"file:{readable}?mode=ro", uri=True, timeout=1.0)
        # Lets SQLite open a file shorter than its header says (cut short by a crash).
        source.execute("PRAGMA writable_schema=ON")
    except sqlite3.Error:
        return 0, 0
    events: set[str] = set()
    delivery_ids: set[int] = set()
    pending = 0
    try:
        target.execute("BEGIN IMMEDIATE")
        for table, columns in _TABLES:
            marks = ", ".join("?" for _ in columns)
            for row in _readable_rows(source, table, columns):
                if table == "deliveries":
                    if row[1] not in events:
                        continue  # its event was lost with the damage
                    delivery_ids.add(row[0])
                    pending += row[3] == "pending"
                elif table == "attempts" and row[0] not in delivery_ids:
                    continue
                try:
                    target.execute(f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) VALUES ({marks})", row)
                except sqlite3.Error:
                    continue  # a row whose values are damaged
                if table == "events":
                    events.add(row[0])
        target.execute("COMMIT")
    except sqlite3.Error as exc:
        logger.warning("afs: salvaging %s stopped early: %s", damaged.name, exc)
        try:
            target.execute("COMMIT")
        except sqlite3.Error:
            pass
    finally:
        source.close()
        if readable != damaged:
            readable.unlink(missing_ok=True)
    return len(events), pending
