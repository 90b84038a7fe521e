"""``afs history`` and ``afs outbox``: what happened to each event, and what has not
gone out yet (taking in what killed processes left first)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from afs_core.cli.common import DELIVERY_FAILED, OK, open_manager, open_store_taking_journals, wait_timeout
from afs_core.delivery.store import status_name
from afs_core.formatting import format_duration
from afs_core.results import DeliveryStatus

_T = TypeVar("_T")


def cmd_history(args: argparse.Namespace) -> int:
    entries = open_store_taking_journals(args).history(run_id=args.run_id, limit=args.limit)
    if args.json:
        print(json.dumps([{
            **e.event, "event_id": e.event_id, "created": e.created, "run_id": e.run_id, "event_type": e.event_type,
            "level": e.level, "title": e.title, "model_name": e.model_name,
            "deliveries": {d.channel: {"status": status_name(d.status), "attempts": d.attempts, "error": d.last_error,
                                       "next_attempt": d.next_attempt} for d in e.deliveries},
        } for e in entries], default=str))
        return OK
    for entry in entries:
        when = dt.datetime.fromtimestamp(entry.created).strftime("%Y-%m-%d %H:%M:%S")
        deliveries = ", ".join(f"{d.channel}={status_name(d.status)}" for d in entry.deliveries) or "no channel"
        run = "".join(f"  {label} {value}" for label, value in (("run", entry.run_id), ("model", entry.model_name))
                      if value)
        print(f"{when}  {entry.level:<8} {entry.title}{run}  [{deliveries}]")
    return OK


def cmd_outbox(args: argparse.Namespace) -> int:
    store = open_store_taking_journals(args)
    if args.action == "retry":
        if not store.requeue(args.id):
            print(f"afs: delivery {args.id} is not a dead delivery", file=sys.stderr)
            return DELIVERY_FAILED
        print(f"delivery {args.id} is pending again")
        return OK
    if args.action == "flush":
        return _flush_outbox(args, store)
    rows = store.outbox()
    if args.json:
        print(json.dumps([{"id": r.delivery_id, "channel": r.channel, "status": status_name(r.status), "title": r.title,
                           "run_id": r.run_id, "attempts": r.attempts, "error": r.last_error,
                           "next_attempt": r.next_attempt} for r in rows]))
    else:
        now = time.time()
        for r in rows:
            when = ""
            if r.status is DeliveryStatus.PENDING and r.next_attempt > now + 1:
                when = f", next try in {format_duration(r.next_attempt - now)}"
            print(f"{r.delivery_id:>6}  {r.channel:<10} {status_name(r.status):<8} {r.attempts} tries{when}  {r.title}"
                  + (f"  ({r.last_error})" if r.last_error else ""))
        if not rows:
            print("the outbox is empty")
    return DELIVERY_FAILED if any(r.status is DeliveryStatus.FAILED for r in rows) else OK


class Flushed(NamedTuple):
    """What a flush did: how many pending deliveries it set out to send (``wanted`` None:
    the outbox could not be read), how many went or died, what is left by channel
    (None: the store was too busy to say), and whether Ctrl-C stopped it."""

    wanted: list[int] | None
    went: int
    dead: int
    pending: dict[str, int] | None
    interrupted: bool


def pending_before(store: Any) -> list[tuple[int, str]]:
    """What is pending (delivery id, channel) before a manager is opened to flush it:
    its workers start at once, and a delivery they finish before :func:`flush_outbox`
    looks must still be counted."""
    try:
        with store.patience(1.0):
            return [(r.delivery_id, r.channel) for r in store.outbox(statuses=(DeliveryStatus.PENDING,), limit=10**9)]
    except (sqlite3.Error, OSError):
        return []  # busy or unreadable: flush_outbox counts what it finds


def flush_outbox(store: Any, manager: Any, deadline: float, *, progress: Callable[[int, int], None] | None = None,
                 warn: Callable[[str], None] = lambda text: print(f"afs: {text}", file=sys.stderr),
                 known: Sequence[tuple[int, str]] = ()) -> Flushed:
    """Deliver what is pending for ``manager``'s channels now, until nothing is left or
    ``deadline`` (monotonic) passes, then close the manager: ``afs outbox flush``, and
    the dashboard's flush button. ``progress(done, total)`` is told as it goes;
    ``known``: what :func:`pending_before` found before the manager was opened."""
    names = list(manager.channels)  # its workers deliver what is pending for its channels
    wanted: list[int] | None = None
    interrupted = False

    def pending_now() -> list[int]:
        store.make_due(names)  # "now": not after a backoff or a Retry-After
        found = {r.delivery_id for r in store.outbox(statuses=(DeliveryStatus.PENDING,), limit=10**9)
                 if r.channel in names}
        return sorted(found | {delivery_id for delivery_id, channel in known if channel in names})

    try:
        wanted = _patiently(store, deadline, pending_now)
        total = len(wanted)
        while True:
            left = _patiently(store, deadline, lambda: store.statuses(wanted).get(DeliveryStatus.PENDING, 0)) \
                if wanted else 0
            if progress is not None:
                progress(total - left, total)
            if left == 0 or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
    except KeyboardInterrupt:
        interrupted = True  # Ctrl-C: stop now; what did not go out stays pending
    except sqlite3.OperationalError as exc:
        warn(f"the store could not be read in time: {exc}")
    finally:
        manager.close(timeout=0 if interrupted else 1)
    try:
        with store.patience(1.0):
            now = store.statuses(wanted) if wanted else {}
            left_by_channel = {n: store.pending([n]).total for n in names}
    except sqlite3.OperationalError as exc:
        warn(f"the store is busy; afs outbox shows what is left ({exc})")
        return Flushed(wanted, 0, 0, None, interrupted)
    went = now.get(DeliveryStatus.DELIVERED, 0) + now.get(DeliveryStatus.FILTERED, 0)
    pending = {n: count for n, count in left_by_channel.items() if count}
    return Flushed(wanted, went, now.get(DeliveryStatus.FAILED, 0), pending, interrupted)


def _flush_outbox(args: argparse.Namespace, store: Any) -> int:
    deadline = time.monotonic() + wait_timeout(args)  # everything below keeps to it, a busy store included
    known = pending_before(store)
    manager = open_manager(args)
    shown = [False]

    def progress(done: int, total: int) -> None:
        if total > 20 and not args.json and sys.stderr.isatty():
            shown[0] = True
            print(f"\r[{'#' * int(30 * done / total):<30}] {done}/{total}", end="", file=sys.stderr, flush=True)

    flushed = flush_outbox(store, manager, deadline, progress=progress, known=known)
    if shown[0]:
        print(file=sys.stderr)
    wanted, went, dead, pending, interrupted = flushed
    if pending is None:
        return 130 if interrupted else DELIVERY_FAILED
    total = len(wanted or ())
    if args.json:
        print(json.dumps({"pending_before": total, "delivered": went, "dead": dead, "pending_after": pending}))
    elif wanted is None:
        print(("interrupted before the outbox could be read" if interrupted else "the outbox could not be read")
              + (f"; pending: {', '.join(f'{n} {c}' for n, c in pending.items())}" if pending else ""))
    else:
        print(f"{went} of {total} pending deliveries went out"
              + (f"; {dead} failed for good (afs outbox shows why)" if dead else "")
              + (f"; still pending: {', '.join(f'{n} {c}' for n, c in pending.items())}" if pending else "")
              + ("; interrupted" if interrupted else ""))
    if interrupted:
        return 130
    return OK if not pending and not dead and wanted is not None else DELIVERY_FAILED


def _patiently(store: Any, deadline: float, read: Callable[[], _T]) -> _T:
    """``read()``, waiting for another process's lock on the store until ``deadline`` in
    short slices: SQLite's own wait cannot be interrupted, so Ctrl-C is heard between them."""
    while True:
        try:
            with store.patience(0.2):
                return read()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() >= deadline:
                raise
