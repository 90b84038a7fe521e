"""Through the engine, in real processes: an incident opened by one process is resolved by
the next, a recovery with nothing open is recorded as filtered, 64 ranks page once."""

import os

import pytest

from afs_core.delivery.store import Store
from afs_core.testing import Scripted

TRIGGER_THEN_EXIT = """
from afs_core import NotificationManager
manager = NotificationManager.from_env()
result = manager.notify_training_failed("llama-7b", "run-7", "CUDA error: an illegal memory access")
print(manager.close(timeout=20), result.outcomes["pagerduty"].status.value)
"""

REPORT = """
import sys
from afs_core import NotificationManager
manager = NotificationManager.from_env()
if sys.argv[1] == "resumed":
    result = manager.notify_training_resumed("llama-7b", "run-7", "ckpt/epoch-3")
else:
    result = manager.notify_training_completed("llama-7b", "run-7", 3600.0)
manager.flush(timeout=20)
result.wait(5)
outcome = result.outcomes["pagerduty"]
print(outcome.status.value, outcome.error)
manager.close(timeout=5)
"""


def python(run_python, code, *args):
    done = run_python(f"import sys; sys.argv[1:] = {list(args)!r}\n{code}")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def python_with(run_python, code, **env):
    done = run_python(code, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def deliveries(channel="pagerduty"):
    """(event type, status, reason) of this channel's deliveries in the store, oldest first."""
    store = Store(os.path.join(os.environ["AFS_HOME"], "afs.db"))
    return [(entry.event_type, d.status.value, d.last_error)
            for entry in reversed(store.history(limit=50)) for d in entry.deliveries if d.channel == channel]


def test_an_incident_opened_by_one_process_is_resolved_by_the_next(run_python, webhook_server, routing_key):
    assert python(run_python, TRIGGER_THEN_EXIT) == "True delivered"
    assert python(run_python, REPORT, "resumed") == "delivered None"
    trigger, resolve = webhook_server.received
    assert trigger.json["event_action"] == "trigger" and trigger.json["dedup_key"] == "afs/run-7/failed"
    assert resolve.json == {"routing_key": routing_key, "event_action": "resolve", "dedup_key": "afs/run-7/failed"}
    # A third process completing the run finds nothing left open: no request, recorded as filtered.
    assert python(run_python, REPORT, "completed") == "filtered no open incident for run run-7"
    assert len(webhook_server.received) == 2
    assert deliveries()[-1] == ("training_completed", "filtered", "no open incident for run run-7")


@pytest.mark.parametrize("delivery", ["process", "thread"])
def test_a_crashed_processs_failure_leaves_no_incident_open_once_the_run_resumed(run_python, webhook_server,
                                                                                 delivery):
    crashed = run_python("import os\nfrom afs_core import NotificationManager\n"
                         "m = NotificationManager.from_env()\n"
                         "m.notify_training_failed('llama-7b', 'run-7', 'Killed')\n"
                         "os._exit(137)\n", env={"AFS_DELIVERY": delivery})
    assert crashed.returncode == 137
    # Its courier outlives it and pages at once; a process delivering itself pages nothing.
    paged = [r.json["event_action"] for r in webhook_server.received]
    assert paged == (["trigger"] if delivery == "process" else []), crashed.stderr
    python(run_python, REPORT, "resumed")
    sent = [(r.json["event_action"], r.json["dedup_key"]) for r in webhook_server.received]
    # The next process takes the crashed one's trigger from its journal. Taken in first, it
    # pages and the resume resolves it; taken in after the resume went out, it is not paged.
    assert sent in ([("trigger", "afs/run-7/failed"), ("resolve", "afs/run-7/failed")], [])
    if not sent:
        (failed,) = [d for d in deliveries() if d[0] == "training_failed"]
        assert failed[1] == "filtered" and failed[2].startswith("not paged: the run completed or resumed at")


def test_a_recovery_with_no_open_incident_is_recorded_as_filtered(run_python, webhook_server):
    assert python(run_python, REPORT, "resumed") == "filtered no open incident for run run-7"
    assert webhook_server.received == []
    assert deliveries() == [("training_resumed", "filtered", "no open incident for run run-7")]


def test_the_least_level_holds_back_warnings_but_lets_recoveries_through(run_python, webhook_server):
    code = """
from afs_core import NotificationManager, builders
m = NotificationManager.from_env()
results = [m.notify_cost_alert(120.0, 100.0, model_name="m", run_id="run-1"),
           m.notify_gpu_memory_warning(0.97, 0.95, gpu=0, run_id="run-1"),
           m.send_event(builders.gpu_recovered("memory", 0.5, gpu=0, run_id="run-1")),
           m.notify_training_completed("m", "run-1", 1.0)]
m.flush(timeout=20)
for r in results:
    r.wait(5)
    print(r.outcomes["pagerduty"].status.value, "|", r.outcomes["pagerduty"].error)
m.close(timeout=5)
"""
    lines = python(run_python, code).splitlines()
    assert lines == [
        "filtered | held back by this channel's level or event-type settings",
        "filtered | warning is below this channel's minimum level (error)",
        "filtered | no open incident for run run-1",
        "filtered | no open incident for run run-1",
    ]
    assert webhook_server.received == []


def test_with_the_level_lowered_a_gpu_alert_pages_and_its_recovery_resolves_it(run_python, webhook_server):
    code = """
from afs_core import NotificationManager, builders
m = NotificationManager.from_env()
m.notify_gpu_memory_warning(0.97, 0.95, gpu=0, model_name="m", run_id="run-1")
m.send_event(builders.gpu_recovered("memory", 0.5, gpu=0, model_name="m", run_id="run-1"))
print(m.close(timeout=20))
"""
    assert python_with(run_python, code, AFS_PAGERDUTY_MIN_LEVEL="warning") == "True"
    trigger, resolve = webhook_server.received
    assert trigger.json["payload"]["severity"] == "warning" and trigger.json["dedup_key"] == "afs/run-1/gpu-memory"
    assert resolve.json["event_action"] == "resolve" and resolve.json["dedup_key"] == "afs/run-1/gpu-memory"



SIXTY_FOUR_RANKS = """
import os
from afs_core import NotificationManager
import afs_pagerduty, requests  # loaded once, before the ranks start

children = []
for rank in range(64):
    pid = os.fork()
    if pid == 0:  # one rank of the job, as a launcher starts it: RANK and WORLD_SIZE set
        code = 1
        try:
            os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank % 8), WORLD_SIZE="64")
            manager = NotificationManager.from_env()
            manager.notify_training_failed("llama-70b", "run-64", "NCCL watchdog: collective timed out after 600000 ms")
            manager.close(timeout=40)
            code = 0
        finally:
            os._exit(code)
    children.append(pid)
print(sorted(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children) == [0] * 64)
"""


def test_64_ranks_reporting_the_same_failure_page_once(run_python, webhook_server):
    done = run_python(SIXTY_FOUR_RANKS, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr
    assert len(webhook_server.received) == 1
    body = webhook_server.received[0].json
    assert body["event_action"] == "trigger" and body["dedup_key"] == "afs/run-64/failed"
    assert body["payload"]["summary"].startswith("Training failed: llama-70b — Run run-64 failed: NCCL watchdog")
    details = body["payload"]["custom_details"]
    assert details["world_size"] == 64 and len(details["ranks"].split(", ")) >= 2
    # What the user sees in the history: one event delivered, the other ranks' reports joined to it.
    assert [d[:2] for d in deliveries()] == [("training_failed", "delivered")]


ATTEMPT = """
import os, sys
from afs_core import NotificationManager
manager = NotificationManager.from_env()
if sys.argv[1] == "fails":
    result = manager.notify_training_failed("llama-7b", "run-3", "CUDA error: an illegal memory access")
else:
    result = manager.notify_training_completed("llama-7b", "run-3", 3600.0)
# This process's event, and what an earlier process left, if due by then.
flushed = manager.flush(timeout=float(sys.argv[2]))
print(result.outcomes["pagerduty"].status.value, flushed, flush=True)  # os._exit below skips flushing
if sys.argv[3] == "exit":
    os._exit(0)  # as a job ends with a delivery pending: the next process on the store takes it
manager.close(timeout=5)
"""


def test_a_new_failure_is_not_resolved_by_an_older_completions_retried_resolve(run_python, webhook_server, accepted):
    """Three attempts of one run, each its own process on one AFS_HOME: the resolve of
    attempt 2's completion, left waiting for a retry, must not close attempt 3's failure."""
    webhook_server.respond(accepted, Scripted(status=503, body='{"status": "unavailable"}',
                                              headers={"Retry-After": "3"}))
    assert python(run_python, ATTEMPT, "fails", "10", "close") == "delivered True"
    # Attempt 2 completes; PagerDuty answers its resolve 503 and the job ends before the retry.
    assert python(run_python, ATTEMPT, "completes", "0.5", "exit") == "pending False"
    # Attempt 3 fails (new trouble, after the completion), then takes attempt 2's pending resolve.
    assert python(run_python, ATTEMPT, "fails", "15", "close") == "delivered True"
    sent = [(r.json["event_action"], r.json["dedup_key"]) for r in webhook_server.received]
    completed = [d for d in deliveries() if d[0] == "training_completed"]
    if sent[2] == ("resolve", "afs/run-3/failed"):  # only on a machine too slow to start attempt 3 within 3 s:
        # the retried resolve went out before the new failure, and closed only the old one.
        assert sent[3:] == [("trigger", "afs/run-3/failed")]
        assert completed == [("training_completed", "delivered", None)]
    else:  # the new failure's trigger first: the completion's retried resolve must not close it
        assert sent == [("trigger", "afs/run-3/failed"), ("resolve", "afs/run-3/failed"),
                        ("trigger", "afs/run-3/failed")]
        assert completed == [("training_completed", "filtered",
                              "the incident was opened again after this recovery (afs/run-3/failed stays open)")]
    # The incident is still known as open: the run's next completion resolves it.
    assert python(run_python, ATTEMPT, "completes", "10", "close") == "delivered True"
    assert [(r.json["event_action"], r.json["dedup_key"]) for r in webhook_server.received[len(sent):]] == [
        ("resolve", "afs/run-3/failed")]


IN_ONE_PROCESS = """
from afs_core import NotificationManager
manager = NotificationManager.from_env()
first = manager.notify_training_failed("llama-7b", "run-3", "boom")
completed = manager.notify_training_completed("llama-7b", "run-3", 60.0)
print(manager.flush(timeout=0.5))  # its resolve answered 503: retried in 2 s
again = manager.notify_training_failed("llama-7b", "run-3", "boom again")  # meanwhile the run fails anew
print(manager.flush(timeout=15))
for result in (first, completed, again):
    outcome = result.outcomes["pagerduty"]
    print(outcome.status.value, "|", outcome.error)
manager.close(timeout=5)
"""


def test_in_one_process_a_resolve_waiting_for_its_retry_spares_a_newer_failure(run_python, webhook_server, accepted):
    webhook_server.respond(accepted, Scripted(status=503, body='{"status": "unavailable"}',
                                              headers={"Retry-After": "2"}))
    assert python(run_python, IN_ONE_PROCESS).splitlines() == [
        "False",
        "True",
        "delivered | None",
        "filtered | the incident was opened again after this recovery (afs/run-3/failed stays open)",
        "delivered | None",
    ]
    assert [r.json["event_action"] for r in webhook_server.received] == ["trigger", "resolve", "trigger"]
