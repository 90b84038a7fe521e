"""What the outbox holds is delivered, across processes, as a user meets it.

Each test runs training scripts as separate processes against a loopback webhook,
through a channel installed as a third-party distribution, and checks the exact
requests the server saw and what ``afs outbox`` says afterwards. Waits are on the
processes and the server, never on a fixed sleep.
"""

import json
import os
import pty
import signal
import socket
import subprocess
import sys
import time

import pytest

from afs_core.testing.loopback import Scripted


def dead_url():
    """A loopback port nothing listens on: the webhook is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def ids(server):
    return [r.json["id"] for r in server.received]


def each_once(server, accepted):
    """Every accepted event received, none twice. Not always in the order accepted: one
    the killed process tried already waits out its backoff, those it never tried go at once."""
    received = ids(server)
    return sorted(received) == sorted(accepted) and len(set(received)) == len(received)


# The machine dies: the training process and its courier process with it (a courier
# that outlives its training process delivers by itself: tests/test_courier.py).
KILL_THE_COURIER = """
courier = getattr(manager._engine, "process", None)
if courier is not None:
    os.kill(courier.pid, signal.SIGKILL)
"""

NOTIFY_THEN_DIE = """
import os, signal
from afs_core import NotificationManager
manager = NotificationManager.from_env()
for i in range({count}):
    result = manager.notify_training_completed("m", f"run-{{i}}", 1.0)
    print(result.event.event_id, flush=True)
""" + KILL_THE_COURIER + """
os.kill(os.getpid(), signal.SIGKILL)
"""

FLUSH = """
import time
from afs_core import NotificationManager
manager = NotificationManager.from_env()
started = time.monotonic()
flushed = manager.flush({timeout})
print(flushed, round(time.monotonic() - started, 3))
"""


def killed_with_pending(runs, count):
    """A run that accepted ``count`` events while the webhook was down, then was killed."""
    done = runs.python(NOTIFY_THEN_DIE.format(count=count), runs.env(dead_url()))
    assert done.returncode == -signal.SIGKILL
    accepted = done.stdout.split()
    assert len(accepted) == count
    return accepted


def test_a_killed_runs_events_are_delivered_by_the_next_process_that_starts_a_manager(runs, webhook_server):
    accepted = killed_with_pending(runs, 5)

    second = runs.python(FLUSH.format(timeout=30), runs.env(webhook_server.url + "/hook"))
    assert second.returncode == 0, second.stderr
    flushed, took = second.stdout.split()
    assert flushed == "True" and float(took) < 30
    assert each_once(webhook_server, accepted)

    outbox = runs.afs(runs.env(webhook_server.url + "/hook"), "outbox")
    assert outbox.returncode == 0 and outbox.stdout.strip() == "the outbox is empty"

    third = runs.python(FLUSH.format(timeout=5), runs.env(webhook_server.url + "/hook"))
    assert third.stdout.split()[0] == "True"
    assert each_once(webhook_server, accepted)  # nothing more


def test_a_manager_that_never_notifies_still_delivers_what_it_finds(runs, webhook_server):
    accepted = killed_with_pending(runs, 3)
    idle = runs.python("from afs_core import NotificationManager\nNotificationManager.from_env()\n",
                  runs.env(webhook_server.url + "/hook", AFS_FLUSH_TIMEOUT="30"))
    assert idle.returncode == 0, idle.stderr
    assert each_once(webhook_server, accepted)  # by the exit flush, without a notify() of its own


def test_afs_outbox_shows_and_flushes_what_a_killed_run_left(runs, webhook_server):
    accepted = killed_with_pending(runs, 5)
    env = runs.env(webhook_server.url + "/hook")

    listed = runs.afs(env, "outbox")
    assert listed.returncode == 0
    rows = listed.stdout.strip().splitlines()
    assert len(rows) == 5 and all(" hook " in row and " pending " in row for row in rows)
    as_json = json.loads(runs.afs(env, "outbox", "--json").stdout)
    assert [r["run_id"] for r in as_json] == [f"run-{i}" for i in range(5)]

    flushed = runs.afs(env, "outbox", "flush", "--timeout", "30")
    assert flushed.returncode == 0, flushed.stderr
    assert flushed.stdout.strip() == "5 of 5 pending deliveries went out"
    assert each_once(webhook_server, accepted)
    assert runs.afs(env, "outbox").stdout.strip() == "the outbox is empty"


def test_afs_history_shows_run_id_and_model_and_json_carries_every_field(runs, webhook_server):
    accepted = killed_with_pending(runs, 2)
    env = runs.env(webhook_server.url + "/hook")
    text = runs.afs(env, "history").stdout.splitlines()
    assert len(text) == 2 and "run run-1  model m" in text[0] and "[hook=pending]" in text[0]
    entries = json.loads(runs.afs(env, "history", "--json").stdout)
    assert [e["event_id"] for e in entries] == accepted[::-1]
    newest = entries[0]
    assert newest["model_name"] == "m" and newest["message"].startswith("Run run-1 finished")
    assert newest["source"]["pid"] and newest["context"]["duration"] == 1.0
    assert newest["deliveries"]["hook"]["status"] == "pending"


COMPLETE_AND_FLUSH = """
import time
from afs_core import NotificationManager
manager = NotificationManager.from_env()
result = manager.notify_training_completed("m", "run-1", 60.0, final_loss=0.1)
print(result.event.event_id, flush=True)
{flush}
"""


@pytest.mark.parametrize("how", ["flush(timeout=60)", "exit flush"])
def test_a_transient_failure_at_the_end_of_a_run_is_retried_before_the_process_ends(runs, webhook_server, how):
    webhook_server.respond(Scripted(status=500), Scripted(status=503))  # then 200
    flush = "print(manager.flush(timeout=60))" if how.startswith("flush") else "print(True)"
    done = runs.python(COMPLETE_AND_FLUSH.format(flush=flush),
                  runs.env(webhook_server.url + "/hook", AFS_FLUSH_TIMEOUT="60"))
    assert done.returncode == 0, done.stderr
    event_id, flushed = done.stdout.split()
    assert flushed == "True"
    assert ids(webhook_server) == [event_id] * 3  # 500, 503, then delivered: all before the process ended
    assert runs.afs(runs.env(webhook_server.url + "/hook"), "outbox").stdout.strip() == "the outbox is empty"


def test_a_retry_after_is_honoured_before_the_process_ends(runs, webhook_server):
    webhook_server.respond(Scripted(status=429, headers={"Retry-After": "1"}))
    done = runs.python(COMPLETE_AND_FLUSH.format(flush="print(manager.flush(timeout=30))"),
                  runs.env(webhook_server.url + "/hook"))
    event_id, flushed = done.stdout.split()
    assert flushed == "True" and ids(webhook_server) == [event_id] * 2
    assert webhook_server.received[1].at - webhook_server.received[0].at >= 1.0


RANK_FAILURE = """
from afs_core import NotificationManager
manager = NotificationManager.from_env()
result = manager.notify_error("NCCL timeout", model_name="m", run_id="run-7")
print(result.event.event_id, flush=True)
{flush}
"""


@pytest.mark.parametrize("ranks", [{"RANK": "1"}, {"RANK": "0"}, {"LOCAL_RANK": "1"}, {"SLURM_PROCID": "3"}],
                         ids=["RANK=1", "RANK=0", "LOCAL_RANK=1", "SLURM_PROCID=3"])
@pytest.mark.parametrize("flush", ["print(manager.flush())", "print(True)"], ids=["flush()", "exit"])
def test_a_failure_on_a_multi_rank_job_is_sent_before_the_process_exits(runs, webhook_server, ranks, flush):
    env = runs.env(webhook_server.url + "/hook", WORLD_SIZE="2", **ranks)
    done = runs.python(RANK_FAILURE.format(flush=flush), env)
    assert done.returncode == 0, done.stderr
    event_id, flushed = done.stdout.split()
    assert flushed == "True"
    assert ids(webhook_server) == [event_id]
    assert webhook_server.received[0].json["type"] == "error_occurred"


def test_a_recovered_store_of_1000_events_goes_out_with_one_afs_outbox_flush(runs, webhook_server):
    accepted = killed_with_pending(runs, 1000)
    env = runs.env(webhook_server.url + "/hook")
    parent, child = pty.openpty()  # stderr on a terminal, as a person runs it: the progress bar shows
    try:
        flushed = subprocess.run([sys.executable, "-m", "afs_core", "outbox", "flush", "--timeout", "120"],
                                 env=env, stdout=subprocess.PIPE, stderr=child, text=True, timeout=180, cwd=runs.tmp_path)
        os.close(child)
        child = -1
        progress = b""
        while True:
            try:
                chunk = os.read(parent, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            progress += chunk
    finally:
        if child != -1:
            os.close(child)
        os.close(parent)
    assert flushed.returncode == 0
    assert flushed.stdout.strip() == "1000 of 1000 pending deliveries went out"
    assert b"1000/1000" in progress and b"[" + b"#" * 30 + b"]" in progress
    assert sorted(ids(webhook_server)) == sorted(accepted) and len(set(ids(webhook_server))) == 1000  # no duplicate


HOLD_THE_STORE = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN IMMEDIATE")  # another process writing, for as long as the test says
print("holding", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


def hold_the_store(runs):
    """A process that holds the store's write lock until it is told to let go."""
    (runs.tmp_path / "hold.py").write_text(HOLD_THE_STORE)
    holder = subprocess.Popen([sys.executable, str(runs.tmp_path / "hold.py"), str(runs.home / "afs.db")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    return holder


def let_go(holder):
    holder.stdin.write("\n")
    holder.stdin.flush()
    holder.wait(timeout=30)


DIE_RIGHT_AFTER_A_ROTATION = """
import os, signal, time
import afs_core.delivery.journal as journal
journal.ROTATE_BYTES = 4096  # rotate every few events
read_new = journal.Journal.read_new

def read_then_die(self):  # killed in the worst moment: a file rotated away, its lines not yet stored
    before, rotated = self._path, bool(self._retired)  # a full map rotates as it is written
    records = read_new(self)
    if rotated or (before is not None and self._path != before):
        os.kill(os.getpid(), signal.SIGKILL)
    return records

journal.Journal.read_new = read_then_die
from afs_core import NotificationManager
manager = NotificationManager.from_env()
for i in range(200):
    print(manager.notify_training_completed("m", f"run-{i}", 1.0).event.event_id, flush=True)
    time.sleep(0.005)
"""


def test_a_kill_right_after_the_journal_rotated_loses_nothing(runs, webhook_server):
    # The process reading its own journal (a courier's reading: tests/test_courier.py).
    done = runs.python(DIE_RIGHT_AFTER_A_ROTATION, runs.env(dead_url(), AFS_DELIVERY="thread"))
    accepted = done.stdout.split()
    assert done.returncode == -signal.SIGKILL and 5 < len(accepted) < 200
    flushed = runs.python(FLUSH.format(timeout=60), runs.env(webhook_server.url + "/hook"))
    assert flushed.stdout.split()[0] == "True", flushed.stderr
    assert sorted(ids(webhook_server)) == sorted(accepted)


def test_a_store_locked_by_another_process_at_exit_costs_no_event_and_no_long_wait(runs, webhook_server):
    runs.python("from afs_core import NotificationManager\nNotificationManager.from_env()\n", runs.env(dead_url()))
    holder = hold_the_store(runs)
    try:
        done = runs.python(COMPLETE_AND_FLUSH.format(flush="t = time.monotonic(); print(manager.flush(timeout=2), "
                                                           "round(time.monotonic() - t, 1))"),
                           runs.env(webhook_server.url + "/hook", AFS_FLUSH_TIMEOUT="1"), timeout=60)
    finally:
        let_go(holder)
    event_id, flushed, took = done.stdout.split()
    assert flushed == "False" and float(took) < 4, done.stderr  # said, within its time
    assert "lost" not in done.stderr
    after = runs.python(FLUSH.format(timeout=30), runs.env(webhook_server.url + "/hook"))
    assert after.stdout.split()[0] == "True"
    assert ids(webhook_server).count(event_id) == 1  # delivered once, by whoever could



def test_ctrl_c_stops_afs_outbox_flush_while_another_process_holds_the_store(runs, webhook_server):
    runs.python("from afs_core import NotificationManager\nNotificationManager.from_env()\n", runs.env(dead_url()))
    holder = hold_the_store(runs)
    try:
        flush = subprocess.Popen([sys.executable, "-m", "afs_core", "outbox", "flush", "--timeout", "60"],
                                 env=runs.env(webhook_server.url + "/hook"), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, cwd=runs.tmp_path)
        time.sleep(2)  # waiting on the lock by now
        asked = time.monotonic()
        flush.send_signal(signal.SIGINT)
        out, err = flush.communicate(timeout=60)
        took = time.monotonic() - asked
    finally:
        let_go(holder)
    assert flush.returncode == 130, err
    assert took < 5  # not after the 60 s it was given, nor after SQLite's own 30 s wait
    assert "interrupted" in out and "Traceback" not in err


SEND_SLOWLY_THEN_DIE = """
import os, signal, time
from afs_core import NotificationManager
manager = NotificationManager.from_env()
print(getattr(getattr(manager._engine, "process", None), "pid", 0), flush=True)  # its courier, if any
for i in range({count}):
    print(manager.notify_training_completed("m", f"run-{{i}}", 1.0).event.event_id, flush=True)
time.sleep(60)
"""


def killed_mid_burst(runs, webhook_server, *, count, delay, killed_after):
    """A run that accepted ``count`` events for a receiver answering after ``delay``, killed
    once ``killed_after`` requests arrived; then a second process flushed the same store.
    What the run accepted, what the receiver got, and what ``afs outbox`` then lists."""
    webhook_server.default = Scripted(delay=delay)
    env = runs.env(webhook_server.url + "/hook")
    sender = subprocess.Popen([sys.executable, "-c", SEND_SLOWLY_THEN_DIE.format(count=count)], env=env,
                              stdout=subprocess.PIPE, text=True, cwd=runs.tmp_path)
    courier = int(sender.stdout.readline())
    accepted = [sender.stdout.readline().strip() for _ in range(count)]
    deadline = time.monotonic() + 30
    while len(webhook_server.received) < killed_after and time.monotonic() < deadline:
        time.sleep(0.002)
    if courier:  # the machine dies: the process delivering goes first
        os.kill(courier, signal.SIGKILL)
    sender.kill()
    sender.wait(timeout=10)
    assert len(webhook_server.received) < count  # killed mid-burst
    webhook_server.default = Scripted()
    after = runs.python(FLUSH.format(timeout=60), env)
    assert after.stdout.split()[0] == "True"
    return accepted, ids(webhook_server), runs.afs(env, "outbox").stdout.strip()


def test_a_run_killed_mid_burst_repeats_at_most_the_send_it_was_in(runs, webhook_server):
    accepted, sent, outbox = killed_mid_burst(runs, webhook_server, count=40, delay=0.05, killed_after=12)
    assert sorted(set(sent)) == sorted(accepted)
    assert len(sent) - len(set(sent)) <= 1  # only a send the kill cut off may go twice
    assert outbox == "the outbox is empty"


def test_a_run_killed_mid_burst_to_a_quick_receiver_repeats_at_most_one_written_group(runs, webhook_server):
    """To a receiver answering within milliseconds, outcomes are written a group at a
    time: a kill repeats at most the sends of one unwritten group, nothing is lost."""
    from afs_core.delivery.engine import RECORD_GROUP

    accepted, sent, outbox = killed_mid_burst(runs, webhook_server, count=300, delay=0.003, killed_after=60)
    assert sorted(set(sent)) == sorted(accepted)
    assert len(sent) - len(set(sent)) <= RECORD_GROUP
    assert outbox == "the outbox is empty"


SEND_AND_LIVE_ON = """
import time
from afs_core import NotificationManager
manager = NotificationManager.from_env()
for i in range(300):
    print(manager.notify_training_completed("m", f"run-{i}", 1.0).event.event_id, flush=True)
print("flushed", manager.flush(timeout=60), flush=True)
time.sleep(60)
"""


def test_history_pruned_by_another_process_is_not_sent_again_after_a_kill(runs, webhook_server):
    sender = subprocess.Popen([sys.executable, "-c", SEND_AND_LIVE_ON], env=runs.env(webhook_server.url + "/hook"),
                              stdout=subprocess.PIPE, text=True, cwd=runs.tmp_path)
    accepted = [sender.stdout.readline().strip() for _ in range(300)]
    assert sender.stdout.readline().strip() == "flushed True"
    pruner = runs.python("from afs_core.delivery.store import open_store\nprint(open_store().prune(max_events=10))\n",
                         runs.env(webhook_server.url + "/hook"))
    assert pruner.stdout.strip() == "290"  # another process pruned the 290 oldest, all delivered
    sender.kill()
    sender.wait(timeout=10)
    after = runs.python(FLUSH.format(timeout=30), runs.env(webhook_server.url + "/hook"))
    assert after.stdout.split()[0] == "True"
    assert sorted(ids(webhook_server)) == sorted(accepted)  # the killed run's journal brought none back


def as_an_older_afs_core_left_it(store_path, write_one):
    """The store in the shape an afs-core from before deliveries carried their event's
    time wrote, pending deliveries kept; and, written as that version writes, one more
    event for the hook channel, the event ``write_one`` gives. Returns that event's id."""
    import sqlite3

    from afs_core.delivery.store import _SCHEMA

    # The table made again without the column (DROP COLUMN needs SQLite 3.35), ids kept.
    table = _SCHEMA.split("CREATE TABLE IF NOT EXISTS deliveries (", 1)[1].split(");", 1)[0]
    assert "    created REAL,\n" in table
    older = table.replace("    created REAL,\n", "", 1)
    columns = "id, event_id, channel, status, attempts, next_attempt, lease_owner, lease_until, last_error, updated"
    db = sqlite3.connect(store_path, isolation_level=None)
    try:
        db.executescript(f"""
            DROP TRIGGER deliveries_created;
            CREATE TABLE older_deliveries ({older});
            INSERT INTO older_deliveries ({columns}) SELECT {columns} FROM deliveries;
            DROP TABLE deliveries;
            ALTER TABLE older_deliveries RENAME TO deliveries;
            CREATE INDEX deliveries_due ON deliveries(channel, status, next_attempt);
        """)
        assert "created" not in [row[1] for row in db.execute("PRAGMA table_info(deliveries)")]
        event = write_one()
        db.execute("INSERT INTO events (event_id, created, run_id, event_type, level, title, data)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?)", (event.event_id, time.time(), event.run_id,
                                                     event.event_type.value, event.level.value, event.title,
                                                     json.dumps(event.to_dict())))
        db.execute("INSERT INTO deliveries (event_id, channel, status, next_attempt, updated)"
                   " VALUES (?, 'hook', 'pending', ?, ?)", (event.event_id, time.time(), time.time()))
    finally:
        db.close()
    return event.event_id


def test_a_killed_runs_store_in_an_older_afs_cores_shape_is_delivered_by_the_next_process(runs, webhook_server):
    """The next process brings the store up to date as it opens it (the deliveries get
    their event's time, by which claims go), then sends what waited, each once."""
    from afs_core.testing import make_event

    accepted = killed_with_pending(runs, 5)
    env = runs.env(webhook_server.url + "/hook")
    assert len(runs.afs(runs.env(dead_url()), "outbox").stdout.strip().splitlines()) == 5  # in the store now
    (store_path,) = runs.home.rglob("afs*.db")
    accepted.append(as_an_older_afs_core_left_it(store_path, lambda: make_event(run_id="run-old")))

    second = runs.python(FLUSH.format(timeout=30), env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.split()[0] == "True"
    assert each_once(webhook_server, accepted)
    assert runs.afs(env, "outbox").stdout.strip() == "the outbox is empty"


SEND_THEN_DIE = """
import os, signal, time
from afs_core import NotificationManager
from afs_core.delivery.store import PRUNED_KEY
manager = NotificationManager.from_env()
deadline = time.monotonic() + 10
while manager.store.get_state(PRUNED_KEY) is None and time.monotonic() < deadline:
    time.sleep(0.05)  # the engine's prune as it starts, on an empty history
for i in range(5):
    print(manager.notify_training_completed("m", f"run-{i}", 1.0).event.event_id, flush=True)
assert manager.flush(timeout=30)
os.kill(os.getpid(), signal.SIGKILL)
"""

PRUNE_AND_COUNT = """
from afs_core.delivery.store import open_store
store = open_store()
print(store.prune(max_events={max_events}, every=3600), len(store.history(limit=100)))
"""

ENGINE_STARTS = """
import time
from afs_core import NotificationManager
manager = NotificationManager.from_env()
deadline = time.monotonic() + 10
while len(manager.store.history(limit=100)) > 2 and time.monotonic() < deadline:
    time.sleep(0.05)  # the engine's prune as it starts
print(len(manager.store.history(limit=100)))
"""


def test_a_prune_recorded_by_a_killed_run_holds_for_the_next_and_a_stricter_one_prunes(runs, webhook_server):
    """A run pruned the store as it started (at most 3 events kept), sent 5 and was
    killed. Within the hour a process keeping as many leaves the history as it is; one
    started to keep 2 prunes it as its engine starts; nothing is left to send."""
    url = webhook_server.url + "/hook"
    first = runs.python(SEND_THEN_DIE, runs.env(url, AFS_HISTORY_MAX_EVENTS="3"))
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert each_once(webhook_server, first.stdout.split())
    as_strict = runs.python(PRUNE_AND_COUNT.format(max_events=3), runs.env(url))
    assert as_strict.stdout.split() == ["0", "5"], as_strict.stderr
    stricter = runs.python(ENGINE_STARTS, runs.env(url, AFS_HISTORY_MAX_EVENTS="2"))
    assert stricter.stdout.split() == ["2"], stricter.stderr
    assert runs.afs(runs.env(url), "outbox").stdout.strip() == "the outbox is empty"
