"""The courier process: ``python -m afs_core.courier FD [BELL]``, started by ``from_env()``.

It builds the training process's manager again from the settings it is sent (only
the channels that process has), and its engine takes in that process's journal as it
is told the journal grows (see :mod:`afs_core.delivery.courier`). It answers flushes
and the close, tells when its store stops (or starts again) being durable, and ends
with its training process: after a close, once the journal's last file is let go; when
the process is gone without one (killed), after delivering for up to its flush timeout.
Ctrl-C is for the training process: the courier ignores it. SIGTERM (a whole job being
stopped) ends the reading at once and delivers what there is, within the same time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from afs_core.delivery.bell import Bell
from afs_core.delivery.courier import FINISH_WAIT, TrainerJournal
from afs_core.delivery.engine import DeliveryEngine, take_stopped_journals
from afs_core.manager import NotificationManager

if TYPE_CHECKING:
    import socket


class _Finish(BaseException):
    """SIGTERM: stop reading, deliver what there is, and go. Not an Exception: code that
    meets errors by catching them (a plugin's import, a hook) must not take it for one."""


def _on_term(signum: int, frame: object) -> None:
    raise _Finish


_term_pending = False


def _hold_term(signum: int, frame: object) -> None:
    """SIGTERM while the courier starts: met once it serves (see main)."""
    global _term_pending
    _term_pending = True


def main(argv: Sequence[str] | None = None) -> int:
    """Deliver for the training process at the other end of the socket ``FD`` (and,
    where one is passed, told how far its journal goes by the bell ``BELL``)."""
    import signal
    import socket

    argv = sys.argv if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the training process; its exit ends this
    # A SIGTERM while the courier starts is noted, and met once it serves: it then ends the
    # reading, as one that comes later does, instead of some step of the start. (Not by
    # blocking the signal: the threads started meanwhile, and what they run, would keep it
    # blocked.)
    signal.signal(signal.SIGTERM, _hold_term)
    sock = socket.socket(fileno=int(argv[1]))
    handler = _ToTrainingProcess(sock)
    top = logging.getLogger("afs")
    lines = _lines(sock)
    try:
        config = json.loads(next(lines))
    except (StopIteration, ValueError):
        return 2
    top.addHandler(handler)
    top.setLevel(int(config.get("level", logging.WARNING)))
    top.propagate = False
    here = str(Path(__file__).resolve().parents[1])
    if config.get("afs_core", here) != here:  # the training process would be served by other code
        _say(sock, f"E runs the afs_core in {here}, not the one in {config['afs_core']}")
        return 1
    tail = TrainerJournal(Path(config["journal"]), str(config.get("owner", "")),
                          removed=lambda name: _say(sock, f"A {name}"))
    try:
        manager = NotificationManager._from_settings(config["env"], only=config["channels"], source=tail)
        if manager.store.path is None or str(manager.store.path) != config["store"]:
            raise RuntimeError(f"it found the store at {manager.store.path}, not at {config['store']}")
        missing = sorted(set(config["channels"]) - set(manager.channels))
        if missing:
            raise RuntimeError(f"it could not make the channels {', '.join(missing)}")
        engine = manager._get_engine()
        assert isinstance(engine, DeliveryEngine)
        engine.on_durability = lambda why: _say(sock, f"D {why or ''}")
        if engine.not_durable is not None:
            _say(sock, f"D {engine.not_durable}")
    except Exception as exc:  # the training process delivers itself, and says why
        _say(sock, f"E could not start ({type(exc).__name__}: {exc})")
        return 1
    names: dict[int, str] = {}  # the training process's numbers for its journal files
    woken, stopped = threading.Event(), threading.Event()

    def hear(number: int, end: int) -> bool:
        name = names.get(number)
        if name is None:
            return False
        tail.told(name, end)
        engine.wake_ingest()
        return True

    if len(argv) > 2:
        threading.Thread(target=Bell(int(argv[2])).watch, args=(hear, woken, stopped),
                         name="afs-courier-bell", daemon=True).start()
    closed = False
    try:
        signal.signal(signal.SIGTERM, _on_term)
        if _term_pending:
            raise _Finish
        for line in lines:
            kind, _, rest = line.partition(" ")
            if kind == "P":
                name, end, number = (rest.split(" ") + ["0", ""])[:3]
                if number.isdigit():
                    names[int(number)] = name
                with contextlib.suppress(ValueError):
                    tail.told(name, int(end))
                engine.wake_ingest()
                woken.set()
            elif kind in ("F", "C"):
                number, timeout, name, end = (rest.split(" ") + ["", "", "", "0"])[:4]
                tail.told(name, int(end or 0))
                seconds = None if timeout == "None" else float(timeout)
                if kind == "C":
                    closed = True
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the close is on its way: let it end
                    _answer(sock, number, manager.close(seconds))
                    break
                threading.Thread(target=lambda n=number, t=seconds: _answer(sock, n, engine.flush(t)),
                                 name="afs-courier-flush", daemon=True).start()
            elif kind == "W":  # the training process stored a rank's failure itself
                engine.wake_workers()
            elif kind == "J":  # a record its journal could not take (a full disk): held in memory here
                with contextlib.suppress(ValueError):
                    engine.take_in(json.loads(rest))
            elif kind == "S":  # the training process delivers itself from now on: this ends what it holds
                break
    except _Finish:
        pass
    stopped.set()
    woken.set()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # what is left is bounded by the flush timeout
    if not closed:  # the training process is gone without closing (killed, or SIGTERM here)
        tail.finish()
        manager.close(float(config.get("flush_timeout", 10.0)))
    else:  # its journal's file is let go right after the answer: what came late waits in the store
        _wait_for_eof(sock, FINISH_WAIT)
        tail.finish()
        with contextlib.suppress(Exception), manager.store.patience(FINISH_WAIT):  # a store locked elsewhere
            take_stopped_journals(manager.store)
    return 0


class _ToTrainingProcess(logging.Handler):
    """Log lines go to the training process, which logs them as its own (its logging
    settings, its notebook cell); once it is gone, to stderr."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.fallback = logging.StreamHandler(sys.stderr)
        self.fallback.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = json.dumps([record.levelno, record.name, record.getMessage()])
            with _SENDING:
                self.sock.sendall(f"L {text}\n".encode())
        except Exception:
            self.fallback.emit(record)


_SENDING = threading.Lock()  # one line at a time on the socket, whichever thread sends it


def _say(sock: socket.socket, line: str) -> None:
    with contextlib.suppress(OSError), _SENDING:
        sock.sendall(line.encode() + b"\n")


def _answer(sock: socket.socket, number: str, result: bool) -> None:
    _say(sock, f"R {number} {1 if result else 0}")


def _lines(sock: socket.socket) -> Iterator[str]:
    buffer = b""
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            return
        if not data:
            return
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "replace")


def _wait_for_eof(sock: socket.socket, seconds: float) -> None:
    sock.settimeout(seconds)
    with contextlib.suppress(OSError):
        while sock.recv(65536):
            pass


if __name__ == "__main__":
    raise SystemExit(main())
