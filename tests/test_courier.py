"""The courier: a second process delivers what a training script accepts.

Each test runs a training script as its own process, as a user does, with the ``hook``
channel (a third-party distribution) posting to a loopback webhook, and looks at what
the server received, at the store and at the processes afterwards. Waits are bounded
and on the processes, the server or the store, never a fixed sleep.
"""

import json
import os
import signal
import sqlite3
import time

import pytest

from afs_core.delivery import courier as courier_module
from afs_core.delivery.bell import Bell
from afs_core.delivery.courier import TrainerJournal
from afs_core.delivery.journal import Journal
from afs_core.source import host_name
from afs_core.testing.loopback import Scripted

NO_BELL = Bell.make() is None  # as the training process finds it


def ids(server):
    return [r.json["id"] for r in server.received]


def wait_for(condition, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is gone for this purpose
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def statuses(home):
    with sqlite3.connect(home / "afs.db") as db:
        return dict(db.execute("SELECT status, COUNT(*) FROM deliveries GROUP BY status").fetchall())


def journals(home):
    directory = home / "journal"
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


NOTIFY_AND_FLUSH = """
import json, threading
from afs_core import NotificationManager
manager = NotificationManager.from_env()
link = manager._engine
results = [manager.notify_training_completed("m", f"run-{{i}}", 1.0) for i in range({count})]
for step in range(300):
    manager.log_metrics(step=step, run_id="run-0", loss=1.0 / (step + 1))
flushed = manager.flush(30)
waited = results[0].wait(10)
print(json.dumps({{
    "engine": type(link).__name__, "courier": link.process.pid, "flushed": flushed, "waited": waited,
    "outcome": results[0].outcomes["hook"].status.value, "ids": [r.event.event_id for r in results],
    "threads": sorted(t.name for t in threading.enumerate()),
}}), flush=True)
print(manager.close(10), flush=True)
"""


def test_a_courier_process_delivers_and_the_training_process_runs_no_delivery_thread(runs, webhook_server):
    done = runs.python(NOTIFY_AND_FLUSH.format(count=40), runs.env(webhook_server.url + "/hook"))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[0])
    assert report["engine"] == "CourierLink"
    assert report["courier"] != os.getpid()
    # The training process keeps only the link's reader, blocked on its socket: no
    # ingest thread, no channel worker takes turns with the training loop.
    assert report["threads"] == ["MainThread", "afs-courier-link"]
    assert report["flushed"] is True and report["waited"] is True and report["outcome"] == "delivered"
    assert sorted(ids(webhook_server)) == sorted(report["ids"])
    assert done.stdout.splitlines()[1] == "True"
    assert wait_for(lambda: not alive(report["courier"]), 15)
    assert statuses(runs.home) == {"delivered": 40}
    assert journals(runs.home) == []  # each file removed once the store held all of it
    with sqlite3.connect(runs.home / "afs.db") as db:  # log_metrics rows went through the journal
        steps = [s for (s,) in db.execute("SELECT step FROM metrics WHERE name = 'loss' AND source NOT IN"
                                          " (SELECT event_id FROM events) ORDER BY step")]
    assert steps == list(range(300)), steps[:5]
    assert runs.afs(runs.env(webhook_server.url + "/hook"), "outbox").stdout.strip() == "the outbox is empty"


BURST_THEN_QUIET = """
import json, time
from afs_core import NotificationManager
manager = NotificationManager.from_env()
link = manager._engine
wake_ups = []
say = link._say
def counting(line):
    if line.startswith(b"P "):
        wake_ups.append(line)
    return say(line)
link._say = counting
ids = [manager.notify_training_completed("m", f"run-{i}", 1.0).event.event_id for i in range(300)]
in_burst = len(wake_ups)
flushed = manager.flush(30)
deadline = time.monotonic() + 10
while link._bell._words[1] != 0 and time.monotonic() < deadline:  # until the courier says it sleeps
    time.sleep(0.005)
slept = link._bell._words[1] == 0
last = manager.notify_training_completed("m", "run-last", 1.0)
print(json.dumps({"flushed": flushed, "in_burst": in_burst, "after": len(wake_ups) - in_burst, "slept": slept,
                  "waited": last.wait(10), "ids": ids + [last.event.event_id]}), flush=True)
manager.close(10)
"""


@pytest.mark.skipif(NO_BELL, reason="no memfd here: every notify() wakes the courier on the socket")
def test_a_busy_courier_reads_the_bell_and_only_a_sleeping_one_is_woken_on_the_socket(runs, webhook_server):
    done = runs.python(BURST_THEN_QUIET, runs.env(webhook_server.url + "/hook"))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["flushed"] is True and report["waited"] is True and report["slept"] is True
    # Without the bell each notify() sends a wake-up: here the busy courier looked itself.
    assert 1 <= report["in_burst"] < 100, report["in_burst"]
    assert report["after"] == 1  # it slept, so the next notify() woke it, and it delivered at once
    assert sorted(ids(webhook_server)) == sorted(report["ids"])
    assert statuses(runs.home) == {"delivered": 301}


WAKE_UPS_DROPPED = """
import json, os, signal, time
from afs_core import NotificationManager
manager = NotificationManager.from_env()
link = manager._engine
courier = link.process.pid
assert manager.notify_training_completed("m", "run-0", 1.0).wait(10)
deadline = time.monotonic() + 10
while link._bell._words[1] != 0 and time.monotonic() < deadline:  # until the courier says it sleeps
    time.sleep(0.005)
slept = link._bell._words[1] == 0
os.kill(courier, signal.SIGSTOP)  # and is slow to wake: the socket fills
say = link._say
let_through = [5]
def full_socket(line):
    if line.startswith(b"P "):
        if not let_through[0]:
            return False  # no room: dropped, as a full socket drops it
        let_through[0] -= 1
    return say(line)
link._say = full_socket
results = [manager.notify_training_completed("m", f"run-{i}", 1.0) for i in range(1, 51)]
link._say = say
os.kill(courier, signal.SIGCONT)
# No more notify(), no flush: the wake-ups that went through wake the courier, and the
# bell tells it how far the journal goes now.
print(json.dumps({"slept": slept, "last": results[-1].wait(10), "all": all(r.wait(1) for r in results)}),
      flush=True)
manager.close(10)
"""


@pytest.mark.skipif(NO_BELL, reason="no memfd here: every notify() wakes the courier on the socket")
def test_events_whose_wake_ups_a_full_socket_dropped_are_delivered_without_a_flush(runs, webhook_server):
    done = runs.python(WAKE_UPS_DROPPED, runs.env(webhook_server.url + "/hook"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"slept": True, "last": True, "all": True}
    assert statuses(runs.home) == {"delivered": 51}


NOTIFY_THEN_DIE = """
import os, signal
from afs_core import NotificationManager
manager = NotificationManager.from_env()
print(manager._engine.process.pid, flush=True)
for i in range({count}):
    result = manager.notify_training_completed("m", f"run-{{i}}", 1.0)
    print(result.event.event_id, flush=True)
os.kill(os.getpid(), signal.{signal})
"""


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_what_a_killed_training_process_accepted_its_courier_delivers_without_a_next_run(runs, webhook_server, how):
    done = runs.python(NOTIFY_THEN_DIE.format(count=60, signal=how), runs.env(webhook_server.url + "/hook"))
    assert done.returncode == -getattr(signal, how), done.stderr
    courier, *accepted = (int(line) if i == 0 else line for i, line in enumerate(done.stdout.split()))
    assert len(accepted) == 60
    # Nobody starts another process: the courier takes the last lines in, delivers and goes.
    assert wait_for(lambda: not alive(courier), 30)
    assert sorted(ids(webhook_server)) == sorted(accepted)
    assert statuses(runs.home) == {"delivered": 60}
    assert journals(runs.home) == []
    # What a user then sees, and what a next process on the same store finds: nothing left.
    assert runs.afs(runs.env(webhook_server.url + "/hook"), "outbox").stdout.strip() == "the outbox is empty"
    after = runs.python("from afs_core import NotificationManager\nprint(NotificationManager.from_env().flush(10))\n",
                        runs.env(webhook_server.url + "/hook"))
    assert after.stdout.split() == ["True"] and len(ids(webhook_server)) == 60


ROTATE_THEN_DIE = """
import os, signal
import afs_core.delivery.journal as journal
journal.MAP_BYTES, journal.ROTATE_BYTES = 4096, 8192  # a new file every few events, in this process
from afs_core import NotificationManager
manager = NotificationManager.from_env()
print(manager._engine.process.pid, flush=True)
for i in range(150):
    print(manager.notify_training_completed("m", f"run-{i}", 1.0).event.event_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_training_process_killed_after_its_journal_went_through_many_files_loses_nothing(
        runs, webhook_server):
    done = runs.python(ROTATE_THEN_DIE, runs.env(webhook_server.url + "/hook"))
    assert done.returncode == -signal.SIGKILL, done.stderr
    courier, *accepted = done.stdout.split()
    assert len(accepted) == 150
    assert wait_for(lambda: not alive(int(courier)), 30)
    received = ids(webhook_server)
    assert sorted(received) == sorted(accepted)
    assert statuses(runs.home) == {"delivered": 150}
    assert journals(runs.home) == []


KILL_THE_COURIER = """
import os, signal, time
from afs_core import NotificationManager
manager = NotificationManager.from_env()
courier = manager._engine.process
ids = [manager.notify_training_completed("m", f"run-{i}", 1.0).event.event_id for i in range(30)]
os.kill(courier.pid, signal.SIGKILL)
courier.wait(10)
for i in range(30, 60):
    ids.append(manager.notify_training_completed("m", f"run-{i}", 1.0).event.event_id)
print(manager.flush(30), manager._engine.delivering_here, flush=True)
print(" ".join(ids), flush=True)
"""


def test_a_killed_courier_hands_delivery_back_to_the_training_process(runs, webhook_server):
    done = runs.python(KILL_THE_COURIER, runs.env(webhook_server.url + "/hook"))
    assert done.returncode == 0, done.stderr
    flushed, accepted = done.stdout.splitlines()
    assert flushed == "True True"
    received = ids(webhook_server)
    # At least once: a request the courier had on the wire when it was killed may go again.
    assert set(received) == set(accepted.split()) and len(received) <= 60 + 16
    assert statuses(runs.home) == {"delivered": 60}
    assert done.stderr.count("the courier process ended unexpectedly") == 1, done.stderr
    assert journals(runs.home) == []


KILLED_IN_CLOSE = """
import os, signal, threading, time
from afs_core import NotificationManager
manager = NotificationManager.from_env()
courier = manager._engine.process
ids = [manager.notify_training_completed("m", f"run-{i}", 1.0).event.event_id for i in range(60)]
threading.Timer(0.5, os.kill, (courier.pid, signal.SIGKILL)).start()  # in the middle of the close's flush
started = time.monotonic()
print(manager.close(20), round(time.monotonic() - started, 1), flush=True)
print(" ".join(ids), flush=True)
"""


def test_a_courier_killed_during_the_close_leaves_the_rest_to_the_training_process(runs, webhook_server):
    webhook_server.default = Scripted(delay=0.03)  # the 60 take about 2 s: the kill comes mid-way
    done = runs.python(KILLED_IN_CLOSE, runs.env(webhook_server.url + "/hook"))
    assert done.returncode == 0, done.stderr
    (closed, took), accepted = done.stdout.splitlines()[0].split(), done.stdout.splitlines()[1].split()
    assert closed == "True" and float(took) < 20, done.stderr
    assert "the courier process ended unexpectedly" in done.stderr
    assert set(ids(webhook_server)) == set(accepted)
    assert statuses(runs.home) == {"delivered": 60}


TERM_THE_COURIER = """
import os, signal, time
from afs_core import NotificationManager
manager = NotificationManager.from_env()
courier = manager._engine.process
ids = [manager.notify_training_completed("m", f"run-{i}", 1.0).event.event_id for i in range(60)]
time.sleep(0.3)
os.kill(courier.pid, signal.SIGTERM)  # the courier alone is told to stop: the run goes on, notifying
for i in range(60, 100):  # while the courier still delivers what it has, for up to its flush timeout
    ids.append(manager.notify_training_completed("m", f"run-{i}", 1.0).event.event_id)
    time.sleep(0.02)
print(manager.flush(60), manager._engine.delivering_here, flush=True)
print(" ".join(ids), flush=True)
"""


def test_a_courier_told_to_stop_while_its_run_goes_on_loses_nothing(runs, webhook_server):
    webhook_server.default = Scripted(delay=0.02)  # the courier is still delivering when the run notifies on
    done = runs.python(TERM_THE_COURIER, runs.env(webhook_server.url + "/hook", AFS_FLUSH_TIMEOUT="3"))
    assert done.returncode == 0, done.stderr
    flushed, accepted = done.stdout.splitlines()
    assert flushed == "True True", done.stderr
    assert set(ids(webhook_server)) == set(accepted.split())
    assert statuses(runs.home) == {"delivered": 100}
    assert journals(runs.home) == []


# A plugin that takes its time to import in the courier only, and says when it begins.
SLOW_IN_THE_COURIER = """
import os, sys, time
if getattr(getattr(sys.modules.get("__main__"), "__spec__", None), "name", None) == "afs_core.courier":
    open(os.environ["STARTING_MARK"], "w").close()
    time.sleep(1.5)
"""

TERM_THE_STARTING_COURIER = """
import os, signal, time
from afs_core import NotificationManager
manager = NotificationManager.from_env()
ids = [manager.notify_training_completed("m", f"run-{i}", 1.0).event.event_id for i in range(5)]
courier = manager._engine.process
deadline = time.monotonic() + 30
while not os.path.exists(os.environ["STARTING_MARK"]) and time.monotonic() < deadline:
    time.sleep(0.01)
os.kill(courier.pid, signal.SIGTERM)  # while the courier imports its plugins
for i in range(5, 10):
    ids.append(manager.notify_training_completed("m", f"run-{i}", 1.0).event.event_id)
print(manager.flush(60), manager._engine.delivering_here, flush=True)
print(" ".join(ids), flush=True)
"""


def test_a_courier_told_to_stop_while_it_starts_stops_once_started(runs, site, webhook_server, tmp_path):
    # A SIGTERM that came during a plugin's import was taken for the import's error: the
    # plugin was skipped and the courier served on as if never told.
    site.install("afs-slow", SLOW_IN_THE_COURIER, entry_point="slow")
    mark = tmp_path / "starting"
    done = runs.python(TERM_THE_STARTING_COURIER, runs.env(webhook_server.url + "/hook", STARTING_MARK=str(mark)))
    assert done.returncode == 0, done.stderr
    assert mark.exists()
    flushed, accepted = done.stdout.splitlines()
    assert flushed == "True True", done.stderr  # the courier ended: this process delivers the rest itself
    assert "failed to import" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert sorted(ids(webhook_server)) == sorted(accepted.split())
    assert statuses(runs.home) == {"delivered": 10}
    env = runs.env(webhook_server.url + "/hook")  # what a user sees next, and the next run on the store
    assert runs.afs(env, "outbox").stdout.strip() == "the outbox is empty"
    after = runs.python("from afs_core import NotificationManager\nprint(NotificationManager.from_env().flush(10))\n", env)
    assert after.stdout.split() == ["True"] and len(ids(webhook_server)) == 10  # nothing sent twice


COURIER_SIGNAL_MASKS = """
import os, time
from afs_core import NotificationManager
manager = NotificationManager.from_env()
manager.notify_training_started("m", "run-1")
assert manager.flush(30)  # the courier started, its workers too
pid = manager._engine.process.pid
for task in sorted(os.listdir(f"/proc/{pid}/task")):
    with open(f"/proc/{pid}/task/{task}/status") as status:
        print(next(line.split()[1] for line in status if line.startswith("SigBlk:")), flush=True)
manager.close(10)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads the threads' signal masks in /proc")
def test_no_thread_of_the_courier_blocks_sigterm(runs, webhook_server):
    # Its threads, and any program a channel runs from them, inherit their mask: a blocked
    # SIGTERM would outlive a job's stop.
    done = runs.python(COURIER_SIGNAL_MASKS, runs.env(webhook_server.url + "/hook"))
    assert done.returncode == 0, done.stderr
    masks = done.stdout.split()
    assert len(masks) >= 2  # the main thread and at least one worker
    assert all(int(mask, 16) & 1 << (signal.SIGTERM - 1) == 0 for mask in masks), masks


FAILS_IN_A_CHILD = '''
import os
from afs_core import Channel, hookimpl

class Picky(Channel):
    required_settings = ("PICKY_URL",)

    @classmethod
    def from_env(cls, env):
        if env.get("PICKY_PARENT") and env["PICKY_PARENT"] != str(os.getpid()):
            raise RuntimeError("this channel works only in the process that read its settings")
        return cls() if env.get("PICKY_URL") else None

    def format(self, event):
        return event.title

    def deliver(self, message):
        with open(os.environ["PICKY_URL"], "a") as out:
            out.write(f"{os.getpid()} {message}\\n")

@hookimpl
def afs_register_channels(register):
    register("picky", Picky)
'''


def test_a_courier_that_cannot_make_a_channel_leaves_delivery_to_the_training_process(runs, site, tmp_path):
    site.install("afs-picky", FAILS_IN_A_CHILD, entry_point="picky")
    out = tmp_path / "picky.txt"
    script = """
import os
os.environ["PICKY_PARENT"] = str(os.getpid())
from afs_core import NotificationManager
manager = NotificationManager.from_env()
manager.notify_training_started("m", "run-1", epochs=1)
print(manager.flush(30), manager._engine.delivering_here, os.getpid(), flush=True)
"""
    done = runs.python(script, runs.env("http://127.0.0.1:9/unused", PICKY_URL=str(out), AFS_LOAD_PLUGINS="picky"))
    assert done.returncode == 0, done.stderr
    flushed, here, pid = done.stdout.split()
    assert (flushed, here) == ("True", "True")
    assert "the courier process could not start" in done.stderr
    assert "could not make the channels picky" in done.stderr
    assert out.read_text().split(" ", 1)[0] == pid  # delivered by the training process itself


def test_afs_delivery_thread_keeps_delivery_in_the_training_process_and_a_wrong_value_is_an_error(
        runs, webhook_server):
    script = """
from afs_core import NotificationManager
manager = NotificationManager.from_env()
manager.notify_training_started("m", "run-1", epochs=1)
print(type(manager._engine).__name__, manager.flush(30), flush=True)
"""
    done = runs.python(script, runs.env(webhook_server.url + "/hook", AFS_DELIVERY="thread"))
    assert done.stdout.split() == ["DeliveryEngine", "True"], done.stderr
    assert len(webhook_server.received) == 1
    wrong = runs.python(script, runs.env(webhook_server.url + "/hook", AFS_DELIVERY="fork"))
    assert wrong.returncode == 1
    assert "ConfigurationError: AFS_DELIVERY must be 'process' or 'thread', got 'fork'" in wrong.stderr


def test_the_console_channel_stays_in_the_training_process(runs):
    script = """
from afs_core import NotificationManager
manager = NotificationManager.from_env()
manager.notify_training_started("m", "run-1", epochs=1)
print(type(manager._engine).__name__, manager.flush(30), flush=True)
"""
    env = runs.env("")
    env.pop("HOOK_URL")
    done = runs.python(script, env)
    assert done.stdout.split() == ["DeliveryEngine", "True"], done.stderr
    assert "Training started" in done.stderr


FORKED_AND_ADDED = """
import os
from afs_core import NotificationManager
from afs_core.testing import RecordingChannel
manager = NotificationManager.from_env()
ids = [manager.notify_training_started("m", "run-parent", epochs=1).event.event_id]
child = os.fork()
if child == 0:  # a data-loader worker: its event waits in its own journal until it exits
    print(manager.notify_training_started("m", "run-child", epochs=1).event.event_id, flush=True)
    os._exit(0)
os.waitpid(child, 0)
bell = manager._engine._bell  # the child rang nothing: the shared page holds the parent's word alone
print(bell is None or bell._words[0] >> 40 == manager._engine._told_number, flush=True)
print(manager.flush(30), manager._engine.delivering_here, flush=True)
recording = RecordingChannel()
manager.register_channel("recording", recording)  # given in code: this process delivers from now on
ids.append(manager.notify_training_completed("m", "run-parent", 1.0).event.event_id)
print(manager.flush(30), manager._engine.delivering_here, len(recording.messages), flush=True)
print(" ".join(ids), flush=True)
"""


def test_a_forked_workers_events_and_a_channel_given_in_code_are_delivered(runs, webhook_server):
    done = runs.python(FORKED_AND_ADDED, runs.env(webhook_server.url + "/hook"))
    assert done.returncode == 0, done.stderr
    child_id, bell_untouched, first, second, parent_ids = done.stdout.splitlines()
    assert bell_untouched == "True"
    assert first == "True False"  # the child's journal taken in by the courier's flush
    assert second == "True True 1"
    assert "the channel 'recording' was given in code" in done.stderr
    assert sorted(ids(webhook_server)) == sorted([child_id, *parent_ids.split()])
    assert statuses(runs.home) == {"delivered": 4}


def test_the_courier_reads_a_journal_across_its_files_in_order_and_removes_each_once_stored(tmp_path, monkeypatch):
    tmp_path = tmp_path / "journal"
    monkeypatch.setattr("afs_core.delivery.journal.MAP_BYTES", 4096)
    monkeypatch.setattr("afs_core.delivery.journal.ROTATE_BYTES", 8192)
    writer = Journal(tmp_path, read_here=False)
    reader = TrainerJournal(tmp_path)
    read: list[int] = []
    names = set()
    for i in range(400):
        writer.append({"event": {"n": i, "pad": "x" * 50}})
        if i % 37 == 0:
            name, end = writer.position()
            names.add(name)
            reader.told(name, end)
            read += [r["event"]["n"] for r in reader.read_new()]
            marks = reader.marks()
            assert marks[name] == end  # the store is told how far each file was read
            for gone in reader.acknowledge():
                assert not (tmp_path / gone).exists()
    assert len(names) > 3  # the writer went through several files
    writer.close()
    reader.finish()  # the writer is gone: its last file is read to its end
    read += [r["event"]["n"] for r in reader.read_new()]
    reader.acknowledge()
    assert read == list(range(400))
    assert list(tmp_path.iterdir()) == []


def test_files_the_courier_was_never_told_of_are_read_in_their_place(tmp_path, monkeypatch):
    """Wake-ups are dropped while the courier is not reading (still starting, or behind):
    the files written meanwhile are found by their names, and read in order."""
    tmp_path = tmp_path / "journal"
    monkeypatch.setattr("afs_core.delivery.journal.MAP_BYTES", 4096)
    monkeypatch.setattr("afs_core.delivery.journal.ROTATE_BYTES", 8192)
    writer = Journal(tmp_path, read_here=False)
    reader = TrainerJournal(tmp_path, owner=f"{host_name()}-{os.getpid()}-")
    writer.append({"event": {"n": 0}})
    reader.told(*writer.position())
    for i in range(1, 300):
        writer.append({"event": {"n": i, "pad": "x" * 50}})
    reader.told(*writer.position())  # told of the last file only: several came between
    assert len(list(tmp_path.iterdir())) > 3
    read = [r["event"]["n"] for r in reader.read_new()]
    assert read == list(range(300))
    reader.acknowledge()
    assert len(list(tmp_path.iterdir())) == 1  # the one written now


def test_an_earlier_file_told_of_late_is_not_read_again(tmp_path, monkeypatch):
    """The bell's look-out and the socket both tell the reader: an end of the previous file
    heard after the next was named must not start that file over (duplicates)."""
    tmp_path = tmp_path / "journal"
    monkeypatch.setattr("afs_core.delivery.journal.MAP_BYTES", 4096)
    monkeypatch.setattr("afs_core.delivery.journal.ROTATE_BYTES", 8192)
    writer = Journal(tmp_path, read_here=False)
    reader = TrainerJournal(tmp_path)
    read = []
    writer.append({"event": {"n": 0}})
    first = writer.position()
    reader.told(*first)
    read += [r["event"]["n"] for r in reader.read_new()]
    i = 1
    while writer.position()[0] == first[0]:
        writer.append({"event": {"n": i, "pad": "x" * 50}})
        i += 1
    reader.told(*writer.position())  # the next file named
    reader.told(*first)  # a late end of the first
    read += [r["event"]["n"] for r in reader.read_new()]
    assert read == list(range(i))


def test_an_end_told_after_the_writer_is_gone_does_not_cut_its_last_file_short(tmp_path):
    """finish() reads the last file to its real end; the bell's look-out may still tell an
    older end a moment later."""
    tmp_path = tmp_path / "journal"
    writer = Journal(tmp_path, read_here=False)
    reader = TrainerJournal(tmp_path)
    writer.append({"event": {"n": 0}})
    told = writer.position()
    reader.told(*told)
    assert [r["event"]["n"] for r in reader.read_new()] == [0]
    writer.append({"event": {"n": 1}})  # never told: the process was killed right after
    writer.close()
    reader.finish()
    reader.told(*told)  # late
    assert [r["event"]["n"] for r in reader.read_new()] == [1]
    reader.acknowledge()
    assert list(tmp_path.iterdir()) == []  # read whole, stored, removed


def test_a_file_appended_to_with_write_is_told_and_read_the_same(tmp_path, monkeypatch):
    tmp_path = tmp_path / "journal"
    monkeypatch.setattr("afs_core.delivery.journal.MAP_JOURNALS", False)
    monkeypatch.setattr("afs_core.delivery.journal.ROTATE_BYTES", 2048)
    writer = Journal(tmp_path, read_here=False)
    reader = TrainerJournal(tmp_path)
    read = []
    for i in range(100):
        writer.append({"event": {"n": i}})
        reader.told(*writer.position())
        read += [r["event"]["n"] for r in reader.read_new()]
        reader.acknowledge()
    assert read == list(range(100))
    assert len(list(tmp_path.iterdir())) == 1  # full files let go and removed: only the one written now


def test_the_courier_is_started_only_where_it_can_do_the_same_work(tmp_path):
    from afs_core.default_plugins.console import ConsoleChannel
    from afs_core.delivery.store import Store
    from afs_core.testing import RecordingChannel

    store = Store(tmp_path / "afs.db")
    assert courier_module.wanted({}, store, {"recording": RecordingChannel()}) is None
    assert courier_module.wanted({"AFS_DELIVERY": "thread"}, store, {"r": RecordingChannel()}) == "AFS_DELIVERY=thread"
    assert "console" in courier_module.wanted({}, store, {"console": ConsoleChannel()})
    assert courier_module.wanted({}, Store(None), {"r": RecordingChannel()}) is not None  # in memory


def test_the_courier_outlives_a_slow_exit_only_by_its_flush_timeout(runs, tmp_path):
    """A webhook that never answers: the training process's close() waits its flush
    timeout, and the courier goes with it, leaving the event pending for the next run."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections, never answers
    try:
        script = """
import time
from afs_core import NotificationManager
manager = NotificationManager.from_env()
courier = manager._engine.process
manager.notify_training_started("m", "run-1", epochs=1)
started = time.monotonic()
print(manager.close(2), courier.pid, round(time.monotonic() - started, 1), flush=True)
"""
        env = runs.env(f"http://127.0.0.1:{silent.getsockname()[1]}/hook", AFS_FLUSH_TIMEOUT="2")
        done = runs.python(script, env)
        closed, pid, took = done.stdout.split()
        assert closed == "False", done.stderr
        assert float(took) < 2 + courier_module.REPLY_MARGIN
        assert wait_for(lambda: not alive(int(pid)), 15)
        assert statuses(runs.home) == {"pending": 1}
        assert journals(runs.home) == []
    finally:
        silent.close()


def test_no_courier_process_is_left_behind_by_a_script_that_just_ends(runs, webhook_server):
    script = """
from afs_core import NotificationManager
manager = NotificationManager.from_env()
print(manager._engine.process.pid, flush=True)
manager.notify_training_started("m", "run-1", epochs=1)
"""
    done = runs.python(script, runs.env(webhook_server.url + "/hook"))
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout)
    assert wait_for(lambda: not alive(pid), 15)
    assert len(webhook_server.received) == 1  # delivered by the exit's close, through the courier

