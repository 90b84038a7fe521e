"""The courier: a second process that delivers what the training process accepts.

Everything the engine does after ``notify()`` returns (taking journal lines into the
store, claiming, formatting, signing, sending, recording) is Python work, and in the
training process it takes turns with the training loop for the one interpreter lock.
``from_env()`` therefore starts a courier: a child process running the very engine,
built from the same settings, which takes in the training process's journal as it
grows. The training process keeps only what must be its own: validating an event,
copying its line into the journal's memory map, and saying how far the journal goes:
in a word of memory both processes share while the courier is busy (see
:mod:`afs_core.delivery.bell`), and in a few bytes on a socket that wake it when it
sleeps.

What does not change: a line in the journal is accepted for good (the courier, or
whoever takes in a stopped process's journals, delivers it); ``flush()`` and
``close()`` wait for the courier's flush; the store says what became of each event.
When the courier cannot start or stops, the training process delivers from its own
threads from then on (said once in the log), taking in what the courier left. The
courier process itself is :mod:`afs_core.courier`.

``AFS_DELIVERY=thread`` keeps delivery in the training process. It is kept there
anyway where a courier could not do the same work: a channel that writes to this
process's own streams (the console), channels or plugins given in code, a store in
memory or across the network, or a platform without file locks.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from afs_core.delivery import ranks
from afs_core.delivery.bell import FILES, Bell
from afs_core.delivery.engine import STORE_ERRORS, DeliveryEngine, _merged
from afs_core.delivery.journal import SUFFIX, Journal, _lock, _read_from
from afs_core.delivery.metrics import ROWS_KEY, MetricEntry, rows_from_entries
from afs_core.delivery.repeats import RepeatedLog
from afs_core.plugins import get_plugins
from afs_core.results import ChannelOutcome, DeliveryStatus, NotifyResult
from afs_core.source import Source, host_name

if TYPE_CHECKING:

    from afs_core.channels.base import Channel
    from afs_core.delivery.policy import ChannelPolicy
    from afs_core.delivery.store import Store
    from afs_core.events import NotificationEvent
    from afs_core.plugins import PluginHost

try:
    import fcntl  # the journal's locks: whose file is whose
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("afs.courier")

SETTING = "AFS_DELIVERY"  # "process" (the default): a courier delivers; "thread": this process does
#: log_metrics calls kept before they go into the journal as one line (and at every
#: notify, flush and close): a metric is never an event, so waiting costs nothing.
METRICS_LINE = 256
REPLY_MARGIN = 5.0  # a flush's answer may come this long after its own timeout
FINISH_WAIT = 5.0  # after a close the courier waits this long for the journal's file to be let go
OUTCOME_POLL = 0.05  # how often a result's wait() looks at the store


def wanted(env: Mapping[str, str], store: Store, channels: Mapping[str, Channel],
           plugins: PluginHost | None = None, *, all_ranks: bool = False) -> str | None:
    """Why no courier delivers for these channels here (None: one may)."""
    choice = env.get(SETTING, "").strip().lower() or "process"
    if choice not in ("process", "thread"):
        from afs_core.errors import ConfigurationError

        raise ConfigurationError(f"{SETTING} must be 'process' or 'thread', got {choice!r}")
    if choice == "thread":
        return f"{SETTING}=thread"
    if fcntl is None or not sys.executable:
        return "this platform has no file locks"
    if store.backend != "sqlite" or not store.durable or store.read_only or store.journal_directory is None:
        return "the store is not a file on this machine"
    if plugins is not None and (not plugins.reproducible or plugins is not get_plugins(env)):
        return "plugins were given in code"
    if not channels:
        return "no channel"
    if not all_ranks and not Source.current().is_main_process:
        return "a rank other than 0 sends failures only"  # a process more for each of a node's GPUs is not worth it
    for name, channel in channels.items():
        if getattr(channel, "stays_in_process", False):
            return f"the {name} channel writes to this process"
    return None


class StoredOutcomes:
    """A :class:`NotifyResult`'s tracker for an event the courier delivers: read from the
    store when asked (nothing is done for it until then)."""

    def __init__(self, store: Store, event_id: str, channels: Sequence[str]) -> None:
        self.store = store
        self.event_id = event_id
        self.channels = tuple(channels)

    @property
    def outcomes(self) -> dict[str, ChannelOutcome]:
        try:
            found = self.store.outcomes(self.event_id)
        except Exception:  # never into the training loop; unknown is pending
            found = {}
        outcomes = {}
        for name in self.channels:
            status, error = found.get(name, (DeliveryStatus.PENDING, None))
            outcomes[name] = ChannelOutcome(name, status, error=error)
        return outcomes

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if all(o.status is not DeliveryStatus.PENDING for o in self.outcomes.values()):
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            time.sleep(OUTCOME_POLL if left is None else min(OUTCOME_POLL, left))


class CourierLink:
    """The training process's side: the journal it writes, and the courier it tells.

    It stands where a :class:`DeliveryEngine` would for the manager (``accept``,
    ``record_metrics``, ``flush``, ``close``, ``attach``, ``detach``, ``not_durable``).
    ``make_local`` makes that engine, for the channels the manager has then, when
    this process must deliver itself after all.
    """

    def __init__(self, store: Store, env: Mapping[str, str], channels: Sequence[str], *,
                 make_local: Callable[[], DeliveryEngine], flush_timeout: float) -> None:
        # The socket module's C core: the module itself (its constants made enums, and
        # selectors) would add about 4 ms to every training script's start-up, for a
        # socketpair. Imported here: a process without a courier loads neither.
        import _socket

        assert store.journal_directory is not None
        self.store = store
        self._not_durable: str | None = None  # as the courier last said
        self._unjournaled: str | None = None  # why events go to the courier's memory, not the journal
        self.log = RepeatedLog(logger)
        self.flush_timeout = flush_timeout
        self._make_local = make_local
        self._local: DeliveryEngine | None = None
        self._switch = threading.Lock()  # submits against a fall-back in progress
        self._closed = False  # close() began
        self._let_go = False  # the courier answered the close (or did not in time): its end of the socket goes
        self._pid = os.getpid()
        self.journal = Journal(store.journal_directory, read_here=False)
        self._metrics: deque[MetricEntry] = deque()
        self._requests = itertools.count(1)
        self._answers: dict[int, str] = {}
        self._answered = threading.Condition()
        self._sock, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self._bell = Bell.make()  # None: every notify() wakes the courier on the socket
        self._told_name = ""  # the journal file the courier is told of, its number, and whether named yet
        self._told_number = 0
        self._named = False
        self._dont_wait = _socket.MSG_DONTWAIT
        self._shut = _socket.SHUT_RDWR
        child_env = dict(os.environ)
        here = str(Path(__file__).resolve().parents[2])  # where afs_core is imported from
        if here not in _site_directories():  # a source tree: the courier must import this afs_core, no other
            child_env["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
        config = {"afs_core": here, "env": dict(env), "channels": list(channels), "store": str(store.path),
                  "journal": str(store.journal_directory), "flush_timeout": flush_timeout,
                  "level": logging.getLogger("afs").getEffectiveLevel(),
                  "owner": f"{host_name()}-{os.getpid()}-"}  # how this process's journal files are named
        # The settings (secrets among them) go through the socket, never the command line.
        self._sock.sendall(json.dumps(config).encode() + b"\n")
        self._theirs, self._child_env = theirs, child_env
        self._process: Child | None = None
        self._spawned = threading.Event()
        self._reader = threading.Thread(target=self._read, name="afs-courier-link", daemon=True)
        self._reader.start()
        _LINKS.add(self)
        atexit.register(_close_at_exit, weakref.ref(self))

    # -- what the manager calls --------------------------------------------------------

    def accept(self, event: NotificationEvent, channels: Sequence[str]) -> NotifyResult:
        local = self._local
        if local is not None:
            return local.accept(event, channels)
        record: dict[str, Any] = {"event": event.to_dict(), "channels": list(channels), "at": time.time()}
        key = ranks.merge_key(event)
        if key is not None:  # a failure other ranks may report too: joined at once, as the engine does
            now = record["at"]
            if self._pid == os.getpid():
                try:
                    joined = self.store.enqueue_or_join(event, channels, dedup_key=key,
                                                        since=now - ranks.MERGE_WINDOW,
                                                        not_before=now + ranks.MERGE_HOLD)
                except STORE_ERRORS as exc:  # busy: joined by the courier from the journal instead
                    logger.info("afs: the store could not take this rank's failure at once (%s); it is merged "
                                "with the other ranks' once the store is free", exc)
                else:
                    if joined is not None:
                        return NotifyResult(event, {n: _merged(n, joined) for n in channels})
                    with self._switch:
                        failed = self._say(b"W\n")  # the courier's workers look now, and wait out the hold
                        if isinstance(failed, OSError):
                            self._fall_back(f"the courier cannot be reached ({failed})")
                    return NotifyResult(event, tracker=StoredOutcomes(self.store, event.event_id, channels))
            record.update(merge={"key": key, "since": now - ranks.MERGE_WINDOW, "rank": event.source.rank},
                          not_before=now + ranks.MERGE_HOLD)
        if self._metrics:
            self._write_metrics()
        with self._switch:
            local = self._local
            if local is None:
                try:
                    position = self.journal.append(record)
                except OSError as exc:
                    local = self._hand_over(record, exc)
                else:
                    if self._unjournaled is not None:
                        self._unjournaled = None
                        # INFO: the courier's store says its own recovery, as a WARNING, beside this
                        logger.info("afs: the journal can be written again; new events are safe from a crash once more")
                    self._tell(*position)
        if local is not None:
            return local.accept(event, channels)
        return NotifyResult(event, tracker=StoredOutcomes(self.store, event.event_id, channels))

    def record_metrics(self, entry: MetricEntry) -> None:
        local = self._local
        if local is not None:
            local.record_metrics(entry)
            return
        if self._pid != os.getpid():
            return  # a data-loader worker's: its parent records the run's
        self._metrics.append(entry)
        if len(self._metrics) >= METRICS_LINE:
            self._write_metrics()

    def flush(self, timeout: float | None = None) -> bool:
        if self._pid != os.getpid():
            return False  # left to the parent, once this process has exited
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._local is None:
            answer = self._ask("F", timeout)
            if answer is not None:
                return answer == "1"
        local = self._local  # the courier stopped meanwhile: this process goes on with it
        if local is None:
            return False
        return local.flush(None if deadline is None else max(deadline - time.monotonic(), 0.0))

    def close(self, timeout: float | None = None) -> bool:
        if self._closed:
            return True
        self._closed = True
        budget = self.flush_timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        if self._pid != os.getpid():
            self.journal.close()  # kept on disk for the parent's courier
            return False
        local = self._local
        if local is not None:
            return local.close(timeout)
        answer = self._ask("C", budget)
        with self._switch:
            local = self._local
            if local is None:
                self._let_go = True
                self.journal.close()  # its lock let go: the courier takes in what is left and removes it
                with contextlib.suppress(OSError):
                    self._sock.shutdown(self._shut)
        if local is not None:  # the courier stopped meanwhile: this process finishes in the time left
            return local.close(max(deadline - time.monotonic(), 0.5))
        return answer == "1"

    def attach(self, name: str, channel: Channel, policy: ChannelPolicy) -> None:
        """A channel given in code: no courier can build it, so this process delivers."""
        with self._switch:
            local = self._local or self._fall_back(f"the channel {name!r} was given in code")
        local.attach(name, channel, policy)

    def detach(self, name: str) -> None:
        with self._switch:
            local = self._local or self._fall_back(f"the channel {name!r} was removed in code")
        local.detach(name)

    @property
    def not_durable(self) -> str | None:
        local = self._local
        return local.not_durable if local is not None else self._unjournaled or self._not_durable

    @property
    def process(self) -> Child | None:
        """The courier process once started; None where it could not be."""
        self._spawned.wait(30.0)
        return self._process

    @property
    def delivering_here(self) -> bool:
        """Whether this process delivers itself now (the courier stopped or was let go)."""
        return self._local is not None

    # -- the courier -------------------------------------------------------------------

    def _tell(self, name: str, end: int) -> None:
        """Say that the journal goes to ``end`` of file ``name``: in the bell while the
        courier is busy, on the socket (the wake-up) when it sleeps or a new file begins.
        Never blocks; a full socket means the courier has a wake-up to read already (the
        next says more)."""
        if self._pid != os.getpid():
            return  # a forked worker: its own file waits for its exit (the bell is the parent's)
        if name != self._told_name:  # a new file: named on the socket before the bell is read for it
            self._told_number = self._told_number % FILES + 1
            self._told_name, self._named = name, False
        wake = self._bell is None or self._bell.ring(self._told_number, end)
        if self._named and not wake:
            return  # the courier is looking at the bell
        sent = self._say(f"P {name} {end} {self._told_number}\n".encode())
        if isinstance(sent, OSError):
            self._fall_back(f"the courier cannot be reached ({sent})")
        elif sent:
            self._named = True  # (no room: named again with the next notify(); the bell keeps its number)

    def _say(self, line: bytes) -> bool | OSError:
        """A line to the courier, not waiting for room (a line begun is finished):
        whether it went, or the error when the courier cannot be reached."""
        if self._pid != os.getpid() or self._closed:
            return True
        try:
            sent = self._sock.send(line, self._dont_wait)
            if sent < len(line):  # only part of it had room: the rest follows, or the lines would run together
                self._sock.sendall(line[sent:])
        except BlockingIOError:
            return False  # no room at all: the courier has wake-ups to read already (the next says more)
        except OSError as exc:
            return exc
        return True

    def _hand_over(self, record: dict[str, Any], exc: OSError) -> DeliveryEngine | None:
        """The journal takes nothing (a full disk): the record goes to the courier, which
        holds it in memory as this process's engine would (``_switch`` held). Returns the
        engine that must take it instead when the courier cannot be reached."""
        if self._unjournaled is None:
            self._unjournaled = f"the journal could not be written since {time.strftime('%H:%M:%S')} ({exc}); " \
                                "events are delivered from memory"
        self.log.log(logging.WARNING, "journal", "afs: the journal cannot be written (%s); notifications are held "
                     "in the courier's memory until it can", exc)
        line = json.dumps(record, separators=(",", ":"), default=str)
        try:
            self._sock.sendall(f"J {line}\n".encode("utf-8", "replace"))
        except OSError as error:
            return self._fall_back(f"the courier cannot be reached ({error})")
        return None

    def _write_metrics(self) -> None:
        """The kept log_metrics calls as one journal line of rows."""
        entries = []
        for _ in range(len(self._metrics)):
            try:
                entries.append(self._metrics.popleft())
            except IndexError:  # another thread took the rest
                break
        rows = rows_from_entries(entries)
        if not rows:
            return
        with self._switch:
            local = self._local
            if local is None:
                with contextlib.suppress(OSError):  # a metric is never an event: a full disk costs points
                    self.journal.append({ROWS_KEY: [list(row) for row in rows]})
        if local is not None:
            for entry in entries:
                local.record_metrics(entry)

    def _ask(self, what: str, timeout: float | None) -> str | None:
        """Send a flush (F) or close (C) to the courier and wait for its answer; None when
        none came (the courier stopped, or it did not answer in time)."""
        if self._metrics:
            self._write_metrics()
        number = next(self._requests)
        with self._switch:
            if self._local is not None:
                return None
            position = self.journal.position() or ("", 0)
            try:
                self._sock.sendall(f"{what} {number} {timeout!r} {position[0]} {position[1]}\n".encode())
            except OSError as exc:
                self._fall_back(f"the courier cannot be reached ({exc})")
                return None
        deadline = None if timeout is None else time.monotonic() + timeout + REPLY_MARGIN
        with self._answered:
            while number not in self._answers:
                left = None if deadline is None else deadline - time.monotonic()
                if (left is not None and left <= 0) or self._local is not None:
                    if self._local is None:
                        logger.warning("afs: the courier did not answer in time")
                    return None
                self._answered.wait(left)
            return self._answers.pop(number)

    def _spawn(self) -> bool:
        """Start the courier (here, not on the caller's thread). What the script accepts
        while it starts waits in the journal, its wake-ups on the socket."""
        try:
            self._process = Child(self._theirs.fileno(), self._child_env,
                                  bell=None if self._bell is None else self._bell.fd)
        except OSError as exc:
            with self._switch:
                self._fall_back(f"the courier process could not be started ({exc})")
            return False
        finally:
            self._theirs.close()
            if self._bell is not None:
                self._bell.forget_descriptor()  # the map stays: later children must not inherit it
            self._spawned.set()
        return True

    def _read(self) -> None:
        """Start the courier, then read its answers; when it stops before being told
        to, this process delivers itself."""
        if not self._spawn():
            return
        buffer = b""
        why = "the courier process ended unexpectedly"
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                kind, _, rest = line.decode("utf-8", "replace").partition(" ")
                if kind == "R":
                    number, _, answer = rest.partition(" ")
                    with self._answered:
                        self._answers[int(number)] = answer
                        self._answered.notify_all()
                elif kind == "L":  # the courier's log line, logged here as this process's own
                    with contextlib.suppress(ValueError, TypeError):
                        level, name, message = json.loads(rest)
                        logging.getLogger(name).log(level, "%s", message)
                elif kind == "A":  # a full journal file the courier stored and removed
                    self.journal.let_go(rest)
                elif kind == "D":  # the courier's store: durable again (empty), or why not
                    self._not_durable = rest or None
                elif kind == "E":
                    why = f"the courier process {rest}"
        if self._pid == os.getpid():
            with self._switch:
                if self._local is None and not self._let_go:  # gone before it was done (a close included)
                    self._fall_back(why)
        if self._process is not None:
            self._process.wait(timeout=30.0)  # reaped, not left a zombie

    def _fall_back(self, why: str) -> DeliveryEngine:
        """From now on this process delivers (``_switch`` held). Its journal file is let
        go, so the engine taking over takes it in from where the store holds it."""
        if self._local is not None:
            return self._local
        logger.warning("afs: %s; notifications are delivered from this process from now on", why)
        self.journal.close()
        with contextlib.suppress(OSError):
            self._sock.sendall(b"S\n")  # a courier still alive lets go of what it claimed
        with contextlib.suppress(OSError):
            self._sock.shutdown(self._shut)
        self._local = self._make_local()
        with self._answered:
            self._answered.notify_all()
        return self._local


class Child:
    """The courier process, spawned with only its end of the socket (``fd``) and the
    bell besides stdin and stdout on /dev/null and this process's stderr, where its
    warnings show beside this process's. (``subprocess`` would cost start-up 4 ms of
    imports.)"""

    def __init__(self, fd: int, env: Mapping[str, str], *, bell: int | None = None) -> None:
        passed = [fd] if bell is None else [fd, bell]
        for each in passed:
            os.set_inheritable(each, True)  # every other descriptor is not (PEP 446)
        null = os.devnull
        self.pid = os.posix_spawn(
            sys.executable, [sys.executable, "-m", "afs_core.courier", *map(str, passed)], env,
            file_actions=[(os.POSIX_SPAWN_OPEN, 0, null, os.O_RDONLY, 0),
                          (os.POSIX_SPAWN_OPEN, 1, null, os.O_WRONLY, 0)])
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else: ended all the same
                self.returncode = 0
                return 0
            if pid == 0:
                return None
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float) -> int | None:
        """Its exit code once it ended (reaped), or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.returncode


def _site_directories() -> set[str]:
    """Where installed packages are: put before the standard library, they could hide it."""
    import site

    found = [*getattr(site, "getsitepackages", list)(), getattr(site, "getusersitepackages", str)()]
    return {str(Path(p).resolve()) for p in found if p}


def _let_go_by_writer(path: Path) -> bool:
    """Whether no live process holds the journal file ``path`` (its lock can be taken)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True  # gone: nothing of it to read
    try:
        return _lock(fd)
    finally:
        os.close(fd)


def _made(name: str) -> int:
    """When a journal file was made, from its name (``host-pid-nanoseconds.jsonl``)."""
    stamp = name[: -len(SUFFIX)].rsplit("-", 1)[-1]
    return int(stamp) if stamp.isdigit() else 0


def _close_at_exit(ref: weakref.ref[CourierLink]) -> None:
    link = ref()
    if link is not None and not link._closed:
        try:
            link.close()
        except Exception:
            logger.exception("afs: could not flush notifications at exit")


_LINKS: weakref.WeakSet[CourierLink] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A data-loader worker must not hold the courier's socket open: the courier takes
    # the socket's end for the training process's. Its own events wait in its journal.
    for link in list(_LINKS):
        link._switch = threading.Lock()
        link._answered = threading.Condition()
        with contextlib.suppress(OSError):
            link._sock.close()
        with contextlib.suppress(OSError):
            link._theirs.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# -- the courier's side ------------------------------------------------------------------


class TrainerJournal:
    """The training process's journal files as the courier reads them: up to where it
    said its lines end, and an earlier file (or the last, once the process is gone) to
    its real end. A file is removed once the store holds all of it."""

    def __init__(self, directory: Path, owner: str = "", removed: Callable[[str], None] = lambda name: None) -> None:
        self.directory = directory
        self.owner = owner  # the start of the process's file names ("host-pid-"): files it was not told of
        self.removed = removed  # told each file removed (the training process then lets go of its lock)
        self._lock = threading.Lock()
        # In order: [name, offset read, partial line, end told (None: read to its end)].
        self._files: list[list[Any]] = []
        self._whole: list[tuple[str, int]] = []  # read to the end, not yet acknowledged
        self._seen: set[str] = set()  # every file taken up: one told of again late (the bell) is not new

    def told(self, name: str, end: int) -> None:
        """The training process writes ``name``, whose whole lines end at ``end``."""
        if not name or "/" in name or name.startswith("."):
            return
        with self._lock:
            if self._files and self._files[-1][0] == name:
                if self._files[-1][3] is not None:  # None: to be read to its real end already
                    self._files[-1][3] = max(self._files[-1][3], end)
                return
            if name in self._seen:  # an earlier file, read to its end already or now
                return
            for file in self._files:
                file[3] = None  # an earlier file: whole, and let go
            for missed in self._between(name):  # wake-ups dropped while this process was not reading
                self._files.append([missed, 0, b"", None])
                self._seen.add(missed)
            self._files.append([name, 0, b"", end])
            self._seen.add(name)

    def _between(self, name: str) -> list[str]:
        """The process's files older than ``name`` this reader was never told of."""
        if not self.owner:
            return []
        known = self._seen
        try:
            found = [p.name for p in self.directory.glob(f"{self.owner}*{SUFFIX}")]
        except OSError:
            return []
        return sorted((n for n in found if n not in known and _made(n) < _made(name)), key=_made)

    def finish(self) -> None:
        """The training process is gone: read its last file to the end too. A file its
        writer still holds (the courier was told to stop, the process goes on) is left
        to that writer, and to whoever takes it in once the writer lets it go."""
        with self._lock:
            for file in self._files:
                if file[3] is not None and _let_go_by_writer(self.directory / file[0]):
                    file[3] = None

    def read_new(self) -> list[dict[str, Any]]:
        with self._lock:
            files = [list(file) for file in self._files]
        records: list[dict[str, Any]] = []
        done: list[tuple[str, int]] = []
        for name, offset, partial, end in files:
            path = self.directory / name
            if end is not None and end <= offset:
                continue
            new, offset, partial = _read_from(path, offset, partial, end=end)
            records += new
            with self._lock:
                for file in self._files:
                    if file[0] == name:
                        file[1], file[2] = offset, partial
                        if end is None:  # read to its real end (told before this read began)
                            self._files.remove(file)
                            done.append((name, offset - len(partial)))
                        break
        with self._lock:
            self._whole += done
        return records

    def marks(self) -> dict[str, int]:
        with self._lock:
            found = dict(self._whole)
            found.update({name: offset - len(partial) for name, offset, partial, _ in self._files})
        return found

    def acknowledge(self) -> list[str]:
        with self._lock:
            done, self._whole = self._whole, []
        for name, _ in done:
            with contextlib.suppress(OSError):
                (self.directory / name).unlink()
            self.removed(name)
        return [name for name, _ in done]
