"""Reading back what can still be read from a damaged store.

A store that SQLite calls malformed (a machine that crashed mid-write, a file cut
short) is moved aside, never deleted; the rows that can still be read from it are
copied into the fresh store, so pending deliveries still go out and history keeps
what survived. Reading skips past pages that fail, within a bounded effort.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger("afs.store")

# Table, columns copied; deliveries lose their leases (the owners are gone).
_TABLES = (
    ("events", ("event_id", "created", "run_id", "event_type", "level", "title", "dedup_key", "ranks", "data")),
    ("deliveries", ("id", "event_id", "channel", "status", "attempts", "next_attempt", "last_error", "updated")),
    ("attempts", ("delivery_id", "at", "outcome", "error")),
    ("run_state", ("key", "value", "updated")),
)
MAX_SKIPS = 400  # read failures tolerated per table before giving up on the rest of it
MAX_STEP = 4096  # rowids stepped over at once through a damaged run


def _readable_rows(db: sqlite3.Connection, table: str, columns: tuple[str, ...]) -> Iterator[tuple[Any, ...]]:
    """Rows of ``table`` in rowid order, stepping over the ones that cannot be read
    (ever larger steps through a damaged run, back to single steps after it)."""
    last, step, skips = 0, 1, 0
    query = f"SELECT rowid, {', '.join(columns)} FROM {table} WHERE rowid > ? ORDER BY rowid"
    while skips < MAX_SKIPS:
        try:
            for row in db.execute(query, (last,)):
                last, step = row[0], 1
                yield row[1:]
            return
        except sqlite3.DatabaseError:
            skips += 1
            last += step
            step = min(step * 2, MAX_STEP)


def salvage(damaged: Path, target: sqlite3.Connection) -> tuple[int, int]:
    """Copy the readable rows of ``damaged`` into ``target`` (an open, empty store).

    Returns (events, pending deliveries) recovered. Never raises for what it reads.
    """
    try:
        source = sqlite3.connect(f"file:{damaged}?mode=ro", uri=True, timeout=1.0)
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
    return len(events), pending
