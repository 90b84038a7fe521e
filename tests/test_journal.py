"""The journal: one line per accepted event, read back once, whatever the disk did."""

import json
import os
import signal
import subprocess
import sys

import afs_core.delivery.journal as journal_module
from afs_core.delivery.journal import Journal, read_whole, take_orphans
from afs_core.source import host_name


def record(i):
    return {"event": {"event_id": f"e{i}"}, "channels": ["c"], "at": float(i)}


def test_a_line_is_what_json_writes_with_the_journals_options(tmp_path):
    # The journal keeps one C encoder instead of json's one per call: the line must not change.
    odd = {"event": {"title": "caf\u00e9 \u2603 \"q\"\n", "metrics": {"loss": float("nan"), "big": 10**30,
           "neg": -0.0, "inf": float("-inf")}, "when": __import__("datetime").date(2026, 12, 7)},
           "channels": [], "at": 1.5, "none": None, "flag": True}
    journal = Journal(tmp_path)
    name, end = journal.append(odd)
    line = (tmp_path / name).read_bytes()[:end]
    assert line == (json.dumps(odd, separators=(",", ":"), default=str) + "\n").encode()
    assert journal.position() == (name, end)
    journal.close()


def test_every_record_is_read_once_in_order_across_rotations(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 300)
    journal = Journal(tmp_path)
    seen = []
    for i in range(60):
        journal.append(record(i))
        if i % 7 == 0:
            seen += journal.read_new()
    seen += journal.read_new()
    assert [r["event"]["event_id"] for r in seen] == [f"e{i}" for i in range(60)]
    assert len(list(tmp_path.glob("*.jsonl"))) > 1  # read, but not yet acknowledged as stored
    journal.acknowledge()
    journal.close()
    assert list(tmp_path.glob("*.jsonl")) == []  # removed once read and stored for good


def test_what_was_read_but_not_stored_for_good_stays_for_the_next_process(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 300)
    journal = Journal(tmp_path)
    for i in range(20):
        journal.append(record(i))
        journal.read_new()  # the store could not take them: never acknowledged
    journal.close()
    left = sorted(r["event"]["event_id"] for path in tmp_path.glob("*.jsonl") for r in read_whole(path))
    assert left == sorted(f"e{i}" for i in range(20))



def test_a_rotated_file_stays_locked_until_the_store_holds_its_lines(tmp_path, monkeypatch):
    """Otherwise another process takes it for a stopped process's journal while this
    one is still storing it, and removes it under it."""
    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 300)
    journal = Journal(tmp_path)
    for i in range(20):
        journal.append(record(i))
        journal.read_new()
    assert len(list(tmp_path.glob("*.jsonl"))) > 1  # rotated, read, not yet acknowledged
    assert list(take_orphans(tmp_path)) == []
    assert sum(journal.marks().values()) > 0
    journal.acknowledge()
    (left,) = tmp_path.glob("*.jsonl")  # the file still written to
    journal.close()
    assert not left.exists()


def test_a_live_writers_journal_is_not_taken_even_when_its_pid_looks_dead(tmp_path):
    import fcntl

    path = tmp_path / f"{host_name()}-999997-1.jsonl"  # a pid from another pid namespace, say
    path.write_text(json.dumps(record(0)) + "\n")
    writer = os.open(path, os.O_RDONLY)
    fcntl.flock(writer, fcntl.LOCK_EX)  # its writer lives, and holds its lock
    try:
        assert list(take_orphans(tmp_path)) == [] and path.exists()
    finally:
        os.close(writer)
    (found,) = take_orphans(tmp_path)  # gone: taken
    assert found[0] == path


def test_a_line_the_full_disk_cut_short_does_not_swallow_the_next(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_module, "MAP_JOURNALS", False)  # a file appended to with write()
    journal = Journal(tmp_path)
    journal.append(record(0))
    real_write = os.write
    calls = []

    def full_disk(fd, data):
        calls.append(data)
        if len(calls) == 1:
            return real_write(fd, data[:10])  # a part of the line...
        raise OSError(28, "No space left on device")  # ...and not even its end

    monkeypatch.setattr(journal_module.os, "write", full_disk)
    try:
        journal.append(record(1))
    except OSError:
        pass
    else:
        raise AssertionError("a line the disk did not take must raise")
    monkeypatch.setattr(journal_module.os, "write", real_write)
    journal.append(record(2))
    assert [r["event"]["event_id"] for r in journal.read_new()] == ["e0", "e2"]


def test_a_stopped_processes_journal_keeps_its_good_lines(tmp_path):
    path = tmp_path / f"{host_name()}-999999-1.jsonl"
    lines = [json.dumps(record(0)), "\x00\x17garbage{", json.dumps(record(1)), json.dumps(record(2))[:25]]
    path.write_text("\n".join(lines))  # the last line was torn by a kill
    assert [r["event"]["event_id"] for r in read_whole(path)] == ["e0", "e1"]
    (found,) = take_orphans(tmp_path)
    assert found[0] == path and len(found[1]) == 2


def test_an_unreadable_journal_is_kept_aside_and_not_tried_again(tmp_path):
    path = tmp_path / f"{host_name()}-999998-1.jsonl"
    path.mkdir()  # reading it fails with an OSError, as a damaged file would
    assert list(take_orphans(tmp_path)) == []
    assert (tmp_path / f"{path.name}.unreadable").is_dir() and not path.exists()
    assert list(take_orphans(tmp_path)) == []


def test_appending_to_a_mapped_journal_makes_no_write_call(tmp_path, monkeypatch):
    """The caller's thread keeps the GIL through notify(): no system call to let go of it."""
    journal = Journal(tmp_path)
    journal.append(record(0))  # the file is opened (and its room reserved) once

    def no_write(fd, data):
        raise AssertionError("append called write()")

    monkeypatch.setattr(journal_module.os, "write", no_write)
    for i in range(1, 50):
        journal.append(record(i))
    assert [r["event"]["event_id"] for r in journal.read_new()] == [f"e{i}" for i in range(50)]


def test_a_disk_with_no_room_to_reserve_gets_its_lines_written(tmp_path, monkeypatch):
    def no_room(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_module.os, "posix_fallocate", no_room, raising=False)
    journal = Journal(tmp_path)
    for i in range(5):
        journal.append(record(i))
    (path,) = tmp_path.glob("*.jsonl")
    assert b"\0" not in path.read_bytes()  # no reserved room: lines alone
    assert [r["event"]["event_id"] for r in read_whole(path)] == [f"e{i}" for i in range(5)]


def test_a_killed_writers_mapped_journal_is_read_to_its_last_line(tmp_path):
    """Killed, its file was never cut to its lines: what follows them is room never written."""
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from afs_core.delivery.journal import Journal\n"
        "journal = Journal(Path(sys.argv[1]))\n"
        "for i in range(30):\n"
        "    journal.append({'event': {'event_id': f'e{i}'}, 'channels': ['c'], 'at': float(i)})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], timeout=60)
    assert done.returncode == -signal.SIGKILL
    (path,) = tmp_path.glob("*.jsonl")
    assert path.read_bytes().endswith(b"\0")  # mapped: the reserved room is still there
    ((found, records),) = take_orphans(tmp_path)
    assert found == path and [r["event"]["event_id"] for r in records] == [f"e{i}" for i in range(30)]


def test_a_journal_cut_to_its_lines_when_a_full_map_rotates(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 300)
    journal = Journal(tmp_path)
    for i in range(12):
        journal.append(record(i))
    files = sorted(tmp_path.glob("*.jsonl"), key=lambda p: int(p.name.rsplit("-", 1)[1].split(".")[0]))
    assert len(files) == 3
    assert all(b"\0" not in path.read_bytes() for path in files[:-1])  # let go of: its lines alone
    assert [r["event"]["event_id"] for r in journal.read_new()] == [f"e{i}" for i in range(12)]


def test_a_map_reserves_a_small_room_so_the_first_write_is_cheap(tmp_path):
    """Writing first into reserved room readies all of it (ext4 zeroes it), on the
    caller's thread: a 4 MiB map cost the first notify() up to 10 ms."""
    journal = Journal(tmp_path)
    journal.append(record(0))
    (path,) = tmp_path.glob("*.jsonl")
    assert path.stat().st_size == journal_module.MAP_BYTES < journal_module.ROTATE_BYTES
    journal.close()


def test_each_new_map_has_twice_the_room_up_to_the_rotation_size(tmp_path, monkeypatch):
    """Small first (a cheap first notify()), then larger: a process writing a lot keeps
    few files, each holding a descriptor until the store has its lines."""
    monkeypatch.setattr(journal_module, "MAP_BYTES", 4096)
    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 32768)
    journal = Journal(tmp_path)
    rooms = []
    for i in range(2000):
        journal.append(record(i))
        if not rooms or len(journal._map) != rooms[-1]:
            rooms.append(len(journal._map))
    assert rooms == [4096, 8192, 16384, 32768]
    assert [r["event"]["event_id"] for r in journal.read_new()] == [f"e{i}" for i in range(2000)]
    journal.acknowledge()
    journal.close()
    assert list(tmp_path.glob("*.jsonl")) == []


def test_a_line_longer_than_a_map_is_written_and_read_in_its_place(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_module, "MAP_BYTES", 4096)
    journal = Journal(tmp_path)
    journal.append(record(0))
    huge = {"event": {"event_id": "huge", "message": "x" * 10_000}, "channels": ["c"], "at": 1.0}
    journal.append(huge)  # too long for the next map: a plain file, appended to with write()
    for i in range(2, 20):
        journal.append(record(i))
    assert [r["event"]["event_id"] for r in journal.read_new()] == ["e0", "huge"] + [f"e{i}" for i in range(2, 20)]
    journal.acknowledge()
    journal.close()
    assert list(tmp_path.glob("*.jsonl")) == []


def test_a_rotation_with_no_descriptor_left_keeps_the_journal_whole(tmp_path, monkeypatch):
    """Making the next file failed after the current one was put aside: it was then both
    written to and removed as read, and its descriptor closed under the writer."""
    monkeypatch.setattr(journal_module, "MAP_BYTES", 4096)
    journal = Journal(tmp_path)
    for i in range(40):
        journal.append(record(i))  # the first map nearly full
    real_open = journal_module.os.open

    def no_descriptor(*args, **kwargs):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(journal_module.os, "open", no_descriptor)
    taken = failed = 0
    for i in range(40, 80):
        try:
            journal.append(record(i))
            taken += 1
        except OSError:
            failed += 1  # the engine keeps such a record in memory
    assert failed >= 1 and taken >= 1  # one line found no room; after it, the file goes on unmapped
    monkeypatch.setattr(journal_module.os, "open", real_open)
    records = journal.read_new()
    ids = [r["event"]["event_id"] for r in records]
    assert len(ids) == len(set(ids)) == 40 + taken
    journal.acknowledge()
    journal.append(record(99))
    assert [r["event"]["event_id"] for r in journal.read_new()] == ["e99"]
    journal.close()


def test_a_rotated_file_that_cannot_be_read_is_let_go_to_the_orphan_scan_not_removed(tmp_path, monkeypatch):
    """A rotated file counted as read when reading it failed, and acknowledging removed
    it unread. It is now let go of, as a stopped process's journal is: a scan takes it."""
    monkeypatch.setattr(journal_module, "MAP_BYTES", 4096)
    journal = Journal(tmp_path)
    for i in range(100):
        journal.append(record(i))  # several rotations
    real_pread = journal_module.os.pread

    def failing(*args):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(journal_module.os, "pread", failing)
    monkeypatch.setattr(journal_module, "open", failing, raising=False)  # (read by name, it was lost)
    first = journal.read_new()
    journal.acknowledge()  # what was read is stored: nothing unread may go
    monkeypatch.setattr(journal_module.os, "pread", real_pread)
    monkeypatch.delattr(journal_module, "open")
    rest = journal.read_new()
    taken = [r for _, records in take_orphans(tmp_path) for r in records]
    assert sorted(r["event"]["event_id"] for r in first + rest + taken) == sorted(f"e{i}" for i in range(100))
    journal.acknowledge()
    journal.close()


def test_a_file_being_made_is_never_taken_for_a_stopped_processs(tmp_path, monkeypatch):
    """Made, then locked: another process's scan in between locked it first, took it for
    an orphan and removed it, and the lines written to it were lost."""
    made = []
    real_lock = journal_module._lock

    def scan_in_between(fd):
        made.append(list(take_orphans(tmp_path)))  # another process's scan, right then
        return real_lock(fd)

    monkeypatch.setattr(journal_module, "_lock", scan_in_between)
    journal = Journal(tmp_path)
    journal.append(record(0))
    assert made == [[]]
    assert [r["event"]["event_id"] for r in journal.read_new()] == ["e0"]
    journal.close()


def test_this_processs_own_map_is_read_without_opening_the_file(tmp_path, monkeypatch):
    """The reading thread copies what was written from memory: opening, reading and
    closing the file would give up the GIL three times a look, each a switch the
    training thread pays for."""
    journal = Journal(tmp_path)
    for i in range(5):
        journal.append(record(i))

    def no_open(*args, **kwargs):
        raise AssertionError("the journal file was opened to read it")

    monkeypatch.setattr(journal_module, "open", no_open, raising=False)
    assert [r["event"]["event_id"] for r in journal.read_new()] == [f"e{i}" for i in range(5)]
    journal.append(record(5))
    assert [r["event"]["event_id"] for r in journal.read_new()] == ["e5"]
    journal.close()
