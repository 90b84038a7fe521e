"""The run a process belongs to when ``afs run`` started it: one run, one story.

``afs run`` names the run (``AFS_RUN_ID``, ``AFS_MODEL_NAME``, ``AFS_RUN_STARTED``) and
opens a report file (``AFS_RUN_REPORT``) for the command it starts. The training code
in that command writes to the file what it said about the run (started, completed,
failed), so the wrapper does not say it again: one start, and at the end one
completion carrying the training code's metrics and the wrapper's wall-clock time, or
the training code's own failure (the wrapper's only when the command died without
one). The file is the one thing both sides see whatever stores and channels each has.

Both sides take the file's lock around reading and writing, so the start is said by
exactly one of them even when both decide at the same moment.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

RUN_ID, MODEL_NAME, RUN_STARTED, RUN_REPORT = "AFS_RUN_ID", "AFS_MODEL_NAME", "AFS_RUN_STARTED", "AFS_RUN_REPORT"

#: Lines the wrapper writes.
ANNOUNCED = "announced"  # the wrapper said the run started; the training code's start is not sent
#: What the training code reports, by event type: the run's start, its end, its failure.
STARTED, COMPLETED = "training_started", "training_completed"
FAILURES = frozenset({"training_failed", "out_of_memory", "error_occurred", "nan_detected"})
#: Failures that end the run: after one, the wrapper has nothing to add.
TERMINAL_FAILURES = frozenset({"training_failed", "out_of_memory"})
#: The training code's own stall report (it carries the stack): the wrapper's is then not sent.
STALLED = "training_stalled"
#: The event types the training code reports to the wrapper.
WATCHED = frozenset({STARTED, COMPLETED, STALLED, *FAILURES})


class RunContext(NamedTuple):
    """What ``afs run`` told the command it started."""

    run_id: str | None
    model_name: str | None
    started: float | None
    report: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RunContext | None:
        env = os.environ if env is None else env
        run_id, model, report = (env.get(name, "").strip() or None for name in (RUN_ID, MODEL_NAME, RUN_REPORT))
        if not (run_id or model or report):
            return None
        try:
            started: float | None = float(env.get(RUN_STARTED, ""))
        except ValueError:
            started = None
        return cls(run_id, model, started, report)


@contextlib.contextmanager
def _locked(path: str) -> Iterator[int]:
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def read_report(path: str) -> list[dict[str, Any]]:
    """Every line written so far; a torn or foreign line is skipped."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("kind"), str):
            found.append(entry)
    return found


def _append(fd: int, entry: Mapping[str, Any]) -> None:
    os.write(fd, (json.dumps(entry, default=str, allow_nan=True) + "\n").encode("utf-8"))


def _the_run(entries: list[dict[str, Any]]) -> str | None:
    """The run the training code reported first: the one this command is about."""
    return next((e.get("run_id") for e in entries if e["kind"] == STARTED), None)


def report_from_training(path: str, kind: str, run_id: str | None, entry: Mapping[str, Any]) -> str | None:
    """Write what the training code says about its run; returns why it must not be
    sent (the wrapper says it instead), or None to send it as usual."""
    try:
        with _locked(path) as fd:
            entries = read_report(path)
            the_run = _the_run(entries)
            if kind == STARTED:
                if the_run is not None and the_run != run_id:
                    return None  # a second run in one command: its own story
                _append(fd, {**entry, "kind": kind, "run_id": run_id})
                if any(e["kind"] == ANNOUNCED for e in entries) or the_run is not None:
                    return "afs run already reported this run's start"
                return None
            if the_run is not None and the_run != run_id:
                return None
            _append(fd, {**entry, "kind": kind, "run_id": run_id})
            if kind == COMPLETED:
                return "afs run reports the completion when the command ends, with these metrics"
            return None
    except OSError:
        return None  # the wrapper then says what it saw itself


def announce(path: str, run_id: str) -> bool:
    """The wrapper's start: True when it is to say it (the training code has not)."""
    try:
        with _locked(path) as fd:
            if _the_run(read_report(path)) is not None:
                return False
            _append(fd, {"kind": ANNOUNCED, "run_id": run_id})
            return True
    except OSError:
        return True


def training_said(path: str) -> list[dict[str, Any]]:
    """What the training code reported about its run, under the lock."""
    try:
        with _locked(path):
            return read_report(path)
    except OSError:
        return []


def alive_file(report: str) -> str:
    """Touched by the training code when it makes progress (``afs run --stall-after``)."""
    return report + ".alive"


def touch_alive(report: str) -> None:
    path = alive_file(report)
    try:
        os.utime(path)
    except FileNotFoundError:
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    except OSError:
        pass


def alive_at(report: str) -> float | None:
    """When the training code last said it made progress (wall-clock seconds), if ever."""
    try:
        return os.stat(alive_file(report)).st_mtime
    except OSError:
        return None
