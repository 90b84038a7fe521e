"""The fast half of the outbox: each process appends accepted events to its own file.

One ``write()`` of a line is all ``notify()`` pays, and once it returned the line
survives the process being killed. A background thread moves lines into the
SQLite store; lines of a process that died are moved by whoever comes next.
Moving is idempotent (events and deliveries are keyed), so a line read twice
does no harm.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

ROTATE_BYTES = 4 * 1024 * 1024
SUFFIX = ".jsonl"


def _host() -> str:
    return os.uname().nodename if hasattr(os, "uname") else "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class Journal:
    """This process's append-only journal in ``directory`` (0700; files 0600)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._fd = -1
        self._pid = -1
        self._path: Path | None = None
        self._read_offset = 0
        self._partial = b""
        self._retired: list[Path] = []  # rotated files still to be read to the end
        _JOURNALS.add(self)

    def _open(self) -> None:
        name = f"{_host()}-{os.getpid()}-{time.time_ns()}{SUFFIX}"
        self._path = self.directory / name
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._pid = os.getpid()
        self._read_offset = 0
        self._partial = b""

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode("utf-8", "replace")
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child: its own file
                self._open()
            written = 0
            try:
                while written < len(line):  # a full disk may take only part of it
                    written += os.write(self._fd, line[written:])
            except OSError:
                if written:
                    try:  # end the torn line, so the next record starts clean
                        os.write(self._fd, b"\n")
                    except OSError:
                        pass
                raise

    def read_new(self) -> list[dict[str, Any]]:
        """Records appended since the last call (rotating a large file on the way)."""
        with self._lock:
            if self._path is None or self._pid != os.getpid():
                return []
            path, offset = self._path, self._read_offset
            if offset >= ROTATE_BYTES:
                os.close(self._fd)
                self._retired.append(path)
                self._open()
        records, offset, self._partial = _read_from(path, offset, self._partial)
        with self._lock:
            if path == self._path:
                self._read_offset = offset
        for retired in list(self._retired):
            if retired != path:
                records += read_whole(retired)
                retired.unlink(missing_ok=True)
                self._retired.remove(retired)
        return records

    def orphans(self) -> list[Path]:
        """Journals of processes on this host that are gone (killed, crashed, exited)."""
        found = []
        here = _host()
        for path in self.directory.glob(f"*{SUFFIX}"):
            parts = path.name[: -len(SUFFIX)].rsplit("-", 2)
            if len(parts) != 3 or not parts[1].isdigit():
                continue
            host, pid = parts[0], int(parts[1])
            if host == here and pid != os.getpid() and not _pid_alive(pid):
                found.append(path)
        return found

    def close(self) -> None:
        """Stop writing; the file is removed once everything in it was read."""
        with self._lock:
            if self._fd >= 0 and self._pid == os.getpid():
                os.close(self._fd)
                size = self._path.stat().st_size if self._path and self._path.exists() else 0
                if self._path is not None and self._read_offset >= size and not self._partial:
                    self._path.unlink(missing_ok=True)
            self._fd, self._pid = -1, -1


def _after_fork_in_child() -> None:
    for journal in list(_JOURNALS):
        journal._lock = threading.Lock()  # a lock held by another thread at fork stays held


import weakref  # noqa: E402

_JOURNALS: weakref.WeakSet[Journal] = weakref.WeakSet()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _read_from(path: Path, offset: int, partial: bytes) -> tuple[list[dict[str, Any]], int, bytes]:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return [], offset, b""
    offset += len(data)
    data = partial + data
    lines = data.split(b"\n")
    rest = lines.pop()  # an incomplete last line waits for its end
    return [r for r in (_parse(line) for line in lines) if r is not None], offset, rest


def read_whole(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a journal; a torn last line (a kill mid-write) is dropped."""
    records, _, _ = _read_from(path, 0, b"")
    return records


def _parse(line: bytes) -> dict[str, Any] | None:
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
