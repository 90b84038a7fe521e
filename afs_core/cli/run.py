"""``afs run``: a training command under watch, for the crashes no in-process code can report.

The child's output passes through unchanged while the last lines are kept; when it
ends, its exit code or the signal that killed it (SIGKILL: likely the
out-of-memory killer; SIGTERM: likely preemption) says what happened. SIGINT and
SIGTERM sent to the wrapper are passed on to the child.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

import attrs

from afs_core import builders, run_context
from afs_core.cli.common import UsageError, open_manager, wait_timeout

if TYPE_CHECKING:
    from afs_core.manager import NotificationManager

TAIL_LINES = 20
SIGNAL_HINTS = {
    signal.SIGKILL: "killed by SIGKILL, most likely the out-of-memory killer",
    signal.SIGTERM: "stopped by SIGTERM, most likely preemption or a scheduler's time limit",
    signal.SIGINT: "interrupted (SIGINT)",
}


@attrs.frozen
class RunOutcome:
    returncode: int  # the child's exit code; -N when signal N killed it
    duration: float
    tail: tuple[str, ...]

    @property
    def signal_name(self) -> str | None:
        if self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"

    @property
    def explanation(self) -> str:
        if self.returncode == 0:
            return "exited normally"
        if self.returncode > 0:
            return f"exited with code {self.returncode}"
        try:
            return SIGNAL_HINTS.get(signal.Signals(-self.returncode), f"killed by {self.signal_name}")
        except ValueError:
            return f"killed by {self.signal_name}"

    @property
    def exit_code(self) -> int:
        """What the wrapper exits with: the child's code, or 128 + N for signal N (as shells do)."""
        return self.returncode if self.returncode >= 0 else 128 - self.returncode


LINE_KEEP = 1000  # characters kept of one line (progress bars can be endless lines)


class Activity:
    """When the command last printed anything (wall-clock seconds), for ``--stall-after``."""

    def __init__(self) -> None:
        self.last_output: float | None = None


def _pump(source: IO[bytes], target: Any, tail: collections.deque[str], lock: threading.Lock,
          activity: Activity | None = None) -> None:
    """Copy ``source`` to ``target`` byte for byte, keeping the last lines. If our own
    reader goes away (``afs run ... | head``) the child's output is still drained, so
    the child never blocks on a full pipe."""
    partial = b""
    reader_gone = False
    while True:
        chunk = source.read1(65536) if hasattr(source, "read1") else source.read(65536)
        if not chunk:
            break
        if activity is not None:
            activity.last_output = time.time()
        if not reader_gone:
            try:
                target.write(chunk)
                target.flush()
            except (BrokenPipeError, OSError, ValueError):
                reader_gone = True
                _let_go_of(target)
        lines = (partial + chunk[-(LINE_KEEP * 64):]).split(b"\n")
        partial = lines.pop()[-LINE_KEEP * 4:]
        with lock:
            tail.extend(line[-LINE_KEEP * 4:].decode("utf-8", "replace")[-LINE_KEEP:] for line in lines[-TAIL_LINES:])
    if partial:
        with lock:
            tail.append(partial.decode("utf-8", "replace"))


def _let_go_of(target: Any) -> None:
    """Our reader is gone: what is left in ``target``'s buffer would fail again when the
    interpreter flushes it at exit (exit status 120). Its descriptor is pointed at the
    null device, so that flush succeeds and the command's own exit status stands."""
    try:
        fd = target.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):
        return
    try:
        os.dup2(null, fd)
    except OSError:
        pass
    finally:
        os.close(null)


def run_watched(
    command: Sequence[str], *, env: Mapping[str, str] | None = None, grace: float = 0.0,
    at_grace: Callable[[], bool] | None = None, activity: Activity | None = None,
    tail: collections.deque[str] | None = None,
) -> RunOutcome:
    """Run ``command``, streaming its output, forwarding SIGINT/SIGTERM; wait for its end.

    ``at_grace`` is asked every fraction of a second until it returns True or ``grace``
    seconds have passed, then once more (``afs run``: has the training code said the
    run started, or must the wrapper?)."""
    started = time.monotonic()
    children: list[subprocess.Popen[bytes]] = []
    early: list[int] = []

    interactive = _in_foreground_of_a_terminal()

    def forward(signum: int, frame: object) -> None:
        if signum == signal.SIGINT and interactive:
            return  # Ctrl-C at the terminal already reached the child: once is enough
        if not children:
            early.append(signum)  # the child is being started: it gets this on arrival
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    # Installed before the child starts: a signal in between must not kill only us.
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run(command, children, early, started, env, grace, at_grace, activity,
                    collections.deque(maxlen=TAIL_LINES) if tail is None else tail)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(
    command: Sequence[str], children: list[subprocess.Popen[bytes]], early: list[int], started: float,
    env: Mapping[str, str] | None, grace: float, at_grace: Callable[[], bool] | None, activity: Activity | None,
    tail: collections.deque[str],
) -> RunOutcome:
    child = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=None,
                             env=None if env is None else dict(env))
    children.append(child)
    for signum in early:
        child.send_signal(signum)
    lock = threading.Lock()
    pumps = [
        threading.Thread(target=_pump, args=(child.stdout, sys.stdout.buffer, tail, lock, activity), daemon=True),
        threading.Thread(target=_pump, args=(child.stderr, sys.stderr.buffer, tail, lock, activity), daemon=True),
    ]
    for pump in pumps:
        pump.start()
    returncode: int | None = None
    if at_grace is not None:
        settled = False
        while not settled and returncode is None:
            left = started + grace - time.monotonic()
            settled = at_grace() or left <= 0
            if not settled:
                try:
                    returncode = child.wait(timeout=min(max(left, 0.01), 0.1))
                except subprocess.TimeoutExpired:
                    pass
    if returncode is None:
        returncode = child.wait()
    for pump in pumps:
        pump.join(timeout=5)
    return RunOutcome(returncode, time.monotonic() - started, tuple(tail))


def _in_foreground_of_a_terminal() -> bool:
    """Whether we (and so the child, in our process group) get the terminal's Ctrl-C."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):
        return False


def command_label(command: Sequence[str]) -> str:
    """A short name for a run started by ``command``: the script (``train.py``), the
    module after ``-m``, else the program."""
    parts = list(command)
    for index, part in enumerate(parts):
        if part == "-m" and index + 1 < len(parts):
            return parts[index + 1]
        if part == "-c":
            break
        if part.endswith(".py"):
            return os.path.basename(part)
    return os.path.basename(parts[0]) if parts else "command"


def cmd_run(args: argparse.Namespace) -> int:
    """``afs run -- COMMAND``: one run, one story. The command is told the run
    (:mod:`afs_core.run_context`); what its training code reports about the run is not
    said again: the wrapper says the start only if the code did not within
    ``--start-grace`` seconds, the end with the code's metrics and its own wall-clock
    time, and a failure only when the code reported none."""
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        raise UsageError("run: give the command after --, e.g. afs run -- python train.py")
    model = args.model or command_label(command)
    run_id = args.run_id or f"{model}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    manager = open_manager(args)
    folder = tempfile.mkdtemp(prefix="afs-run-")  # private (0700): what the code says about its run
    report = os.path.join(folder, "report.jsonl")
    os.close(os.open(report, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    env = {**os.environ, run_context.RUN_ID: run_id, run_context.MODEL_NAME: model,
           run_context.RUN_STARTED: repr(time.time()), run_context.RUN_REPORT: report}
    start = _Start(manager, report, model, run_id, command)
    activity, tail = Activity(), collections.deque[str](maxlen=TAIL_LINES)
    stalls = (_StallWatch(manager, start, report, model, run_id, args.stall_after, activity, tail)
              if args.stall_after else None)
    try:
        try:
            if stalls is not None:
                stalls.start()
            outcome = run_watched(command, env=env, grace=args.start_grace, at_grace=start.settle,
                                  activity=activity, tail=tail)
        except OSError as exc:  # never started: the failure alone says it
            manager.notify_training_failed(model, run_id, f"could not start {command[0]}: {exc}")
            print(f"afs: could not start {command[0]}: {exc}", file=sys.stderr)
            return 127
        if stalls is not None:
            stalls.stop()  # its last word (a recovery) comes before the end
        start.settle(final=True)
        _report_end(manager, outcome, run_context.training_said(report), model, run_id)
        return outcome.exit_code
    finally:
        if stalls is not None:
            stalls.stop()
        manager.close(timeout=wait_timeout(args))
        shutil.rmtree(folder, ignore_errors=True)


class _StallWatch(threading.Thread):
    """``--stall-after``: the command printed nothing and its code reported no progress for
    that long: one stall, with its last lines, then one recovery when it speaks again.
    When the code under watch tells its own stall (it carries the stack), this one is
    not told: the wrapper waits a little longer than the threshold to let it."""

    def __init__(self, manager: NotificationManager, start: _Start, report: str, model: str, run_id: str,
                 stall_after: float, activity: Activity, tail: collections.deque[str]) -> None:
        super().__init__(name="afs-run-stall", daemon=True)
        self.opening = start
        self.manager, self.report, self.model, self.run_id = manager, report, model, run_id
        self.stall_after, self.activity, self.tail = stall_after, activity, tail
        self.begun = time.time()
        self.halt = threading.Event()

    def stop(self) -> None:
        self.halt.set()
        if self.is_alive():
            self.join(timeout=5)

    def _last_progress(self) -> float:
        seen = [t for t in (self.activity.last_output, run_context.alive_at(self.report)) if t is not None]
        return max([self.begun, *seen])

    def _subject(self, said: list[dict[str, Any]]) -> tuple[str, str]:
        theirs = next((e for e in said if e["kind"] == run_context.STARTED), None)
        if theirs is None:
            return self.model, self.run_id
        return str(theirs.get("model_name") or self.model), str(theirs.get("run_id") or self.run_id)

    def run(self) -> None:
        patience = self.stall_after + min(max(self.stall_after * 0.1, 0.5), 30.0)
        stalled_since: float | None = None  # the last progress before the stall
        theirs = False  # the code told this stall itself (and so tells its end)
        while True:
            halted = self.halt.wait(min(max(self.stall_after / 10, 0.1), 5.0))
            last = self._last_progress()
            silent = time.time() - last
            if stalled_since is not None and last > stalled_since:  # it spoke again
                if not theirs:
                    model, run = self._subject(run_context.read_report(self.report))
                    self.manager.send_event(builders.training_progress_resumed(model, run, last - stalled_since))
                stalled_since = None
            # Halted: the command ended. The look above still tells a recovery it made
            # just before its end, so the story reads stalled, resumed, completed.
            if halted:
                return
            if stalled_since is not None:
                continue
            if silent < patience:
                continue
            said = run_context.read_report(self.report)
            stalled_since = last
            model, run = self._subject(said)
            # The code's own watchdog told a stall since its last progress: it knows better
            # (its stack), and its console line must not count as this command speaking.
            since = run_context.alive_at(self.report) or self.begun
            theirs = any(e["kind"] == run_context.STALLED and float(e.get("at") or 0) >= since for e in said)
            if theirs:
                continue
            self.opening.settle(final=True)  # a start not yet said comes first
            self.manager.send_event(builders.command_stalled(model, run, silent, tail=self._tail()))

    def _tail(self) -> list[str]:
        for _ in range(5):  # the pumps may append meanwhile (nothing is printed while stalled)
            try:
                return list(self.tail)
            except RuntimeError:
                continue
        return []


class _Start:
    """Who says the run started: the training code (within the grace), else the wrapper."""

    def __init__(self, manager: NotificationManager, report: str, model: str, run_id: str,
                 command: Sequence[str]) -> None:
        self.manager, self.report, self.model, self.run_id, self.command = manager, report, model, run_id, command
        self.settled = False
        self._lock = threading.Lock()  # asked by the main thread and the stall watch

    def settle(self, final: bool = False) -> bool:
        """True once decided. Until ``final`` it only looks whether the code said it."""
        with self._lock:
            if self.settled:
                return True
            said = any(e["kind"] == run_context.STARTED for e in run_context.read_report(self.report))
            if not said and not final:
                return False
            self.settled = True
            if not said and run_context.announce(self.report, self.run_id):
                self.manager.send_event(builders.command_started(self.model, self.run_id, self.command))
            return True


def _report_end(manager: NotificationManager, outcome: RunOutcome, said: list[dict[str, Any]],
                model: str, run_id: str) -> None:
    """The end of the run, unless the training code already told it."""
    theirs = next((e for e in said if e["kind"] == run_context.STARTED), None)
    if theirs is not None:  # the run is the one the code reported
        run_id = str(theirs.get("run_id") or run_id)
        model = str(theirs.get("model_name") or model)
    mine = [e for e in said if e.get("run_id") == run_id]
    if any(e["kind"] in run_context.TERMINAL_FAILURES for e in mine):
        return  # the code said how it failed: that is the story
    completed = next((e for e in reversed(mine) if e["kind"] == run_context.COMPLETED), None)
    if outcome.returncode == 0:
        metrics = completed.get("metrics") if completed else None
        final_loss = completed.get("final_loss") if completed else None
        manager.notify_training_completed(model, run_id, duration=outcome.duration,
                                          final_loss=final_loss if isinstance(final_loss, (int, float)) else None,
                                          eval_metrics=metrics if isinstance(metrics, dict) else None)
        return
    explanation = outcome.explanation + (" after the training reported it completed" if completed else "")
    manager.send_event(builders.command_failed(
        model, run_id, explanation, exit_code=outcome.exit_code, signal=outcome.signal_name,
        duration=outcome.duration, tail=outcome.tail))
