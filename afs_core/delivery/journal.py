"""The fast half of the outbox: each process appends accepted events to its own file.

Copying a line into the file's memory map is all ``notify()`` pays, and once it
returned the line is in the kernel's page cache, so it survives the process being
killed. No system call means the caller never lets go of the GIL mid-notify (a
``write()`` did, and the engine's threads took it for their turn). The map's room is
reserved on disk first (``posix_fallocate``), so a full disk is an error when a file
is opened, never a SIGBUS while writing into it; where that cannot be reserved (no
room, a file system or platform without it) the file is appended to with ``write()``.
A mapped file is cut to its lines when it is let go; one whose process was killed
ends in NUL bytes, the room never written, which a reader leaves out.

A background thread moves lines into the store and acknowledges them once the store
holds them durably; only then is a file let go. The writer holds a lock on its file
for as long as it lives, so a journal whose lock can be taken belongs to a process
that is gone (whatever its pid says inside another container), and whoever comes
next moves its lines. Moving is idempotent (events and deliveries are keyed), so a
line read twice does no harm.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import threading
import time
import weakref
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from afs_core.source import host_name

ROTATE_BYTES = 4 * 1024 * 1024  # a file is let go once this much was read (or its map is full)
# A process's first map's room. The first write into room posix_fallocate reserved makes
# the file system ready all of it (ext4 zeroes the reserved extent: 0.5 to 10 ms for
# 4 MiB, on the caller's thread), so the first notify() gets this little. Each new file
# gets twice its predecessor's room, up to ROTATE_BYTES: a process writing a lot keeps
# few files (each holds a descriptor until the store has its lines).
MAP_BYTES = 256 * 1024
OPENING = ".opening"  # a file being made: locked, then named as a journal (orphan scans skip it)
OPENING_LEFT_SECONDS = 60.0  # one older than this was left by a process killed while making it
SUFFIX = ".jsonl"
UNREADABLE = ".unreadable"
MAP_JOURNALS = True  # False: every file is appended to with write() (tests cover both)
#: One encoder for every line (json.dumps with options builds one per call). Records
#: are plain data made fresh from frozen events, so there is no cycle to look for.
_LINE = json.JSONEncoder(separators=(",", ":"), default=str, check_circular=False)


def _line_encoder() -> Callable[[dict[str, Any]], str]:
    """``_LINE.encode``, without building a C encoder and a float formatter for every line
    as ``encode()`` does (1.4 of its 9.8 us for an event's line, on the caller's thread).
    Checked against ``encode()`` once; an interpreter where they differ, or without the
    C encoder, keeps ``encode()``."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # an interpreter without the C accelerator
        return _LINE.encode
    try:
        encoder = make(None, _LINE.default, json.encoder.encode_basestring_ascii, None, _LINE.key_separator,
                       _LINE.item_separator, _LINE.sort_keys, _LINE.skipkeys, _LINE.allow_nan)
        sample = {"a": [1, -2.5, None, True, "\u00e9\n"], "b": {"c": float("inf")}, "d": _LINE}
        if "".join(encoder(sample, 0)) != _LINE.encode(sample):
            return _LINE.encode
    except Exception:  # a C encoder made differently
        return _LINE.encode
    return lambda record: "".join(encoder(record, 0))


_encode = _line_encoder()

logger = logging.getLogger("afs.journal")

try:
    import fcntl
except ImportError:  # Windows: liveness falls back to the pid in the file name
    fcntl = None  # type: ignore[assignment]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _mapped(fd: int, path: Path, size: int) -> mmap.mmap | None:
    """The file's map of ``size`` bytes, its room reserved on disk; None where that cannot
    be (the file is then appended to with write())."""
    if not MAP_JOURNALS or not hasattr(os, "posix_fallocate"):
        return None
    try:
        os.posix_fallocate(fd, 0, size)
        return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError) as exc:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no reserved room left behind: the file is appended to
        logger.debug("afs: journal %s is written with write(): %s", path.name, exc)
        return None


def _lock(fd: int) -> bool:
    """Take the file's lock without waiting; True when taken (or when locks do not exist here)."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


class Journal:
    """This process's append-only journal in ``directory`` (0700; files 0600).

    ``read_here`` False: another process (the courier) reads the files, told where the
    written lines end by :meth:`position`. A full file is then cut to its lines and kept
    locked (no orphan scan takes it) until the courier, having stored and removed it,
    says so: :meth:`let_go`."""

    def __init__(self, directory: Path, *, read_here: bool = True) -> None:
        self.read_here = read_here
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._fd = -1
        self._pid = -1
        self._path: Path | None = None
        self._name = ""  # the file's name, kept: Path.name costs every notify() a Python call
        self._read_offset = 0
        self._acked_offset = 0
        self._partial = b""
        # Rotated files still to be read to the end: (path, offset read, partial line,
        # descriptor). The descriptor stays open, and with it the file's lock, until the
        # store holds the file's lines: till then no other process takes it for an orphan.
        self._retired: list[tuple[Path, int, bytes, int]] = []
        # Read whole, not yet stored for good: (path, descriptor, bytes of lines in it).
        self._unacknowledged: list[tuple[Path, int, int]] = []
        self._torn = False  # the last line was cut short and its end not written
        self._map: mmap.mmap | None = None  # the file's map, where lines are copied
        self._end = 0  # bytes written into the map
        self._room = min(MAP_BYTES, ROTATE_BYTES)  # the next map's size
        _JOURNALS.add(self)

    def _open(self, mapped: bool = True) -> None:
        """A new file to write to; raises OSError, with nothing changed, when none can be
        made. It is made under a name orphan scans pass over and named as a journal once
        locked: another process's scan could otherwise lock it first, take it for a
        stopped process's and remove it."""
        name = f"{host_name()}-{os.getpid()}-{time.time_ns()}{SUFFIX}"
        path = self.directory / name
        if fcntl is None:  # no locks (Windows): the pid in the name says whose it is
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        else:
            opening = path.with_name(name + OPENING)
            fd = os.open(opening, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                _lock(fd)  # held while this process lives: the file is not an orphan
                os.rename(opening, path)
            except OSError:
                os.close(fd)
                with contextlib.suppress(OSError):
                    opening.unlink()
                raise
        self._map = _mapped(fd, path, self._room) if mapped else None
        if self._map is not None:
            self._room = min(self._room * 2, ROTATE_BYTES)
        self._end = 0  # bytes of whole lines written (mapped or not)
        self._fd = fd
        self._path, self._name = path, name
        self._pid = os.getpid()
        self._read_offset = self._acked_offset = 0
        self._partial = b""
        self._torn = False

    def _rotate(self, mapped: bool) -> None:
        """A new file for the lines to come; the current one is read to its end first.
        Where no new file can be made (no descriptor left, no room) this raises and the
        current one goes on, appended to with write()."""
        assert self._path is not None
        self._unmap()
        current = (self._path, self._read_offset, self._partial, self._fd)
        self._open(mapped)
        self._retired.append(current)  # only once the new one is there: never two owners of one

    def _unmap(self) -> None:
        """Let go of the map, and of the room it had left: the file holds its lines alone."""
        if self._map is not None:
            self._map.close()
            self._map = None
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._end)

    def append(self, record: dict[str, Any]) -> tuple[str, int]:
        """Write one record as one line, and return the journal's position after it (see
        :meth:`position`). Raises OSError when the disk takes none or part of it (the
        record then is not in the journal; a part is never mistaken for it)."""
        line = (_encode(record) + "\n").encode("utf-8", "replace")
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child: its own file
                self._open()
            if self._map is not None:
                if self._end + len(line) > len(self._map):  # full: a fresh map (a huge line: a plain file)
                    self._rotate(mapped=len(line) <= self._room)
                if self._map is not None:
                    self._map[self._end:self._end + len(line)] = line
                    self._end += len(line)
                    return self._name, self._end
            elif not self.read_here and self._end >= ROTATE_BYTES:
                with contextlib.suppress(OSError):  # no new file: this one goes on
                    self._rotate(mapped=False)
            if self._torn:  # end the piece a full disk left, so this line starts clean
                self._end += os.write(self._fd, b"\n")
                self._torn = False
            written = 0
            try:
                while written < len(line):  # a full disk may take only part of it
                    written += os.write(self._fd, line[written:])
            except OSError:
                if written:
                    self._end += written  # a damaged line, ended here or by the next: readers skip it
                    try:
                        self._end += os.write(self._fd, b"\n")
                    except OSError:
                        self._torn = True
                raise
            self._end += written
            return self._name, self._end

    def let_go(self, name: str) -> None:
        """The courier stored and removed the full file ``name``: its lock may go."""
        with self._lock:
            for retired in self._retired:
                if retired[0].name == name:
                    self._retired.remove(retired)
                    os.close(retired[3])
                    return

    def position(self) -> tuple[str, int] | None:
        """The file written to now and the bytes of whole lines in it; None before the
        first line."""
        with self._lock:
            if self._path is None or self._pid != os.getpid():
                return None
            return self._name, self._end

    def read_new(self) -> list[dict[str, Any]]:
        """Records appended since the last call, oldest first (rotating a large file on
        the way: a new file is started before the full one is let go). Files are only
        removed by :meth:`acknowledge`, once the store holds what was read."""
        with self._lock:
            if self._path is None or self._pid != os.getpid():
                return []
            path, offset, partial = self._path, self._read_offset, self._partial
            end = self._end if self._map is not None else None  # what was written of the map
            if offset >= ROTATE_BYTES and self._map is None:
                old = (self._path, self._read_offset, self._partial, self._fd)
                try:
                    self._open()
                except OSError:
                    pass  # no room for a new file: go on with this one
                else:
                    self._retired.append(old)
                    path, offset, partial = self._path, 0, b""
                    end = 0 if self._map is not None else None
            retired, self._retired = self._retired, []
            # What this process wrote into its map is copied from memory: no system call,
            # so the reading thread does not give up the GIL (and take it back) to open,
            # read and close the file.
            written = self._map[offset:end] if self._map is not None and end is not None else None
        records: list[dict[str, Any]] = []
        for old_path, old_offset, old_partial, old_fd in retired:  # the rest of rotated files first
            try:  # through the descriptor it keeps: reading needs none to spare
                rest, lines_end, _ = _read_fd(old_fd, old_path, old_offset, old_partial)
            except OSError as exc:
                # Acknowledging it would remove it unread. Let go of it instead, as a
                # stopped process's: an orphan scan takes it in from what the store
                # holds of it, or keeps it aside as unreadable for a person to look at.
                logger.warning("afs: the journal %s cannot be read (%s); it is taken in as a stopped "
                               "process's", old_path.name, exc)
                os.close(old_fd)
                continue
            records += rest
            self._unacknowledged.append((old_path, old_fd, lines_end))
        if written is not None:
            new, offset, partial = _lines(written, offset, partial)
        else:
            new, offset, partial = _read_from(path, offset, partial, end=end)
        with self._lock:
            if path == self._path:
                self._read_offset, self._partial = offset, partial
        return records + new

    def marks(self) -> dict[str, int]:
        """For each file read from: how many of its bytes were read as whole lines (what
        the store holds once it took them in)."""
        with self._lock:
            found = {path.name: end for path, _, end in self._unacknowledged}
            if self._path is not None and self._pid == os.getpid():
                found[self._path.name] = self._read_offset - len(self._partial)
        return found

    def acknowledge(self) -> list[str]:
        """Everything read so far is in the store for good: rotated files may go (their
        names are returned), and this file may go at close."""
        done, self._unacknowledged = self._unacknowledged, []
        for path, fd, _ in done:
            path.unlink(missing_ok=True)
            os.close(fd)
        with self._lock:
            self._acked_offset = self._read_offset
        return [path.name for path, _, _ in done]

    def close(self) -> str | None:
        """Stop writing; the file is removed once everything in it was read and stored
        for good (otherwise it stays, and the next process on this store takes it in).
        Returns the name of the file removed."""
        removed = None
        with self._lock:
            if self._fd >= 0 and self._pid == os.getpid():
                self._unmap()
                size = self._path.stat().st_size if self._path and self._path.exists() else 0
                done = self._read_offset >= size and not self._partial and self._acked_offset >= self._read_offset
                if self._path is not None and done and not self._unacknowledged:
                    self._path.unlink(missing_ok=True)
                    removed = self._path.name
                os.close(self._fd)  # the lock goes with it
                for _, fd, _ in self._unacknowledged:  # kept on disk for the next process
                    os.close(fd)
                for *_, fd in self._retired:
                    os.close(fd)
                self._unacknowledged, self._retired = [], []
            self._fd, self._pid, self._map = -1, -1, None
        return removed


def orphans(directory: Path) -> list[Path]:
    """Journals of processes on this host that are gone (killed, crashed, exited)."""
    found = []
    here = host_name()
    try:
        paths = list(directory.glob(f"*{SUFFIX}"))
    except OSError:
        return []
    for path in paths:
        parts = path.name[: -len(SUFFIX)].rsplit("-", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        host, pid = parts[0], int(parts[1])
        if host != here:
            continue  # another machine's; its own host takes it in
        if fcntl is None and (pid == os.getpid() or _pid_alive(pid)):
            continue
        found.append(path)
    return sorted(found, key=lambda p: p.name.rsplit("-", 1)[-1])  # oldest file first


def take_orphans(
    directory: Path, start: Callable[[str], int] = lambda name: 0
) -> Generator[tuple[Path, list[dict[str, Any]]], None, None]:
    """Each stopped process's journal with its records from ``start(file name)`` on,
    locked while the caller stores them and then removes the file (a live writer holds
    its lock, so its file is skipped). A file that cannot be read is renamed
    ``.unreadable`` (kept for a person to look at) so it is not tried again and again."""
    _remove_half_made(directory)
    for path in orphans(directory):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # gone meanwhile: taken by another process
        try:
            if not _lock(fd):
                continue  # its writer is alive (perhaps in another container), or another process takes it in
            offset = start(path.name)  # what the store cannot answer is the caller's to handle
            try:
                records, _, _ = _read_from(path, offset, b"", strict=True)
            except OSError as exc:
                logger.warning("afs: the journal %s a stopped process left cannot be read (%s); kept as %s%s",
                               path.name, exc, path.name, UNREADABLE)
                with contextlib.suppress(OSError):
                    path.rename(path.with_name(path.name + UNREADABLE))
                continue
            yield path, records
        finally:
            os.close(fd)


def _remove_half_made(directory: Path) -> None:
    """Files a process was killed making (between creating and naming them: no line in
    them yet), once they are old enough not to be one being made now."""
    try:
        opening = list(directory.glob(f"*{SUFFIX}{OPENING}"))
    except OSError:
        return
    for path in opening:
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime > OPENING_LEFT_SECONDS:
                path.unlink()


def _after_fork_in_child() -> None:
    for journal in list(_JOURNALS):
        journal._lock = threading.Lock()  # a lock held by another thread at fork stays held


_JOURNALS: weakref.WeakSet[Journal] = weakref.WeakSet()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _read_from(
    path: Path, offset: int, partial: bytes, strict: bool = False, end: int | None = None
) -> tuple[list[dict[str, Any]], int, bytes]:
    """Lines from ``offset`` on (to ``end``, where this process knows what it wrote)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read() if end is None else handle.read(max(end - offset, 0))
    except FileNotFoundError:
        return [], offset, b""
    except OSError:
        if strict:
            raise
        return [], offset, partial
    if end is None:  # another process's file: a mapped one killed before it was cut to its lines
        data = data.rstrip(b"\0")  # ends in room never written
    return _lines(data, offset, partial)


def _read_fd(fd: int, path: Path, offset: int, partial: bytes) -> tuple[list[dict[str, Any]], int, bytes]:
    """Lines from ``offset`` on, of ``path``, open as ``fd`` (raises OSError)."""
    if not hasattr(os, "pread"):  # Windows: by its name
        return _read_from(path, offset, partial, strict=True)
    size = os.fstat(fd).st_size
    data = os.pread(fd, size - offset, offset) if size > offset else b""
    return _lines(data.rstrip(b"\0"), offset, partial)  # a map not cut to its lines ends in room never written


def _lines(data: bytes, offset: int, partial: bytes) -> tuple[list[dict[str, Any]], int, bytes]:
    """The records in ``data`` (read from ``offset``, after ``partial``), the offset
    after it, and an incomplete last line, which waits for its end."""
    offset += len(data)
    lines = (partial + data).split(b"\n")
    rest = lines.pop()
    return [r for r in (_parse(line) for line in lines) if r is not None], offset, rest


def read_whole(path: Path, strict: bool = False) -> list[dict[str, Any]]:
    """Every complete record of a journal. A torn last line (a kill mid-write) and
    damaged lines are skipped; the rest is kept. ``strict``: raise OSError when the
    file cannot be read at all."""
    records, _, _ = _read_from(path, 0, b"", strict)
    return records


def _parse(line: bytes) -> dict[str, Any] | None:
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
