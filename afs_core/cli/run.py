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
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

import attrs

from afs_core import builders
from afs_core.cli.common import UsageError, open_manager, wait_timeout

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


def _pump(source: IO[bytes], target: Any, tail: collections.deque[str], lock: threading.Lock) -> None:
    """Copy ``source`` to ``target`` byte for byte, keeping the last lines. If our own
    reader goes away (``afs run ... | head``) the child's output is still drained, so
    the child never blocks on a full pipe."""
    partial = b""
    reader_gone = False
    while True:
        chunk = source.read1(65536) if hasattr(source, "read1") else source.read(65536)
        if not chunk:
            break
        if not reader_gone:
            try:
                target.write(chunk)
                target.flush()
            except (BrokenPipeError, OSError, ValueError):
                reader_gone = True
        lines = (partial + chunk[-(LINE_KEEP * 64):]).split(b"\n")
        partial = lines.pop()[-LINE_KEEP * 4:]
        with lock:
            tail.extend(line[-LINE_KEEP * 4:].decode("utf-8", "replace")[-LINE_KEEP:] for line in lines[-TAIL_LINES:])
    if partial:
        with lock:
            tail.append(partial.decode("utf-8", "replace"))


def run_watched(command: Sequence[str]) -> RunOutcome:
    """Run ``command``, streaming its output, forwarding SIGINT/SIGTERM; wait for its end."""
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
        return _run(command, children, early, started)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(
    command: Sequence[str], children: list[subprocess.Popen[bytes]], early: list[int], started: float
) -> RunOutcome:
    child = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=None)
    children.append(child)
    for signum in early:
        child.send_signal(signum)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    lock = threading.Lock()
    pumps = [
        threading.Thread(target=_pump, args=(child.stdout, sys.stdout.buffer, tail, lock), daemon=True),
        threading.Thread(target=_pump, args=(child.stderr, sys.stderr.buffer, tail, lock), daemon=True),
    ]
    for pump in pumps:
        pump.start()
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
    """``afs run -- COMMAND``: started, then completed or failed as the command ended."""
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        raise UsageError("run: give the command after --, e.g. afs run -- python train.py")
    model = args.model or command_label(command)
    run_id = args.run_id or f"{model}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    manager = open_manager(args)
    try:
        manager.send_event(builders.command_started(model, run_id, command))
        try:
            outcome = run_watched(command)
        except OSError as exc:
            manager.notify_training_failed(model, run_id, f"could not start {command[0]}: {exc}")
            print(f"afs: could not start {command[0]}: {exc}", file=sys.stderr)
            return 127
        if outcome.returncode == 0:
            manager.notify_training_completed(model, run_id, duration=outcome.duration)
        else:
            manager.send_event(builders.command_failed(
                model, run_id, outcome.explanation, exit_code=outcome.exit_code, signal=outcome.signal_name,
                duration=outcome.duration, tail=outcome.tail))
        return outcome.exit_code
    finally:
        manager.close(timeout=wait_timeout(args))
