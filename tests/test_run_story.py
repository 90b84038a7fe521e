"""One run, one story: ``afs run`` and the training code it starts share the run, and
what the code says about it is not said again by the wrapper. Each test runs the real
command over a real child, as a user does, and reads what a person would see: the
console lines, and the history in the store."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from afs_core.delivery.store import Store

# The training code: reports what STEPS says, through the manager from_env() gives it.
CHILD = """
import os, sys, time
from afs_core import NotificationManager
manager = NotificationManager.from_env()
run = os.environ.get("OWN_RUN") or os.environ["AFS_RUN_ID"]
for step in os.environ.get("STEPS", "").split(","):
    if step == "started":
        manager.notify_training_started("own-model", run, epochs=3)
    elif step == "completed":
        manager.notify_training_completed("own-model", run, duration=0.01, final_loss=0.125,
                                          eval_metrics={"accuracy": 0.97})
    elif step == "failed":
        manager.notify_training_failed("own-model", run, RuntimeError("CUDA error: device-side assert"))
    elif step == "flush":
        manager.flush(timeout=10)
    elif step == "print":
        print("step", flush=True)
    elif step.startswith("sleep"):
        time.sleep(float(step[5:]))
    elif step == "kill":
        manager.flush(timeout=10)
        os.kill(os.getpid(), 9)
    elif step.startswith("exit"):
        manager.close(timeout=10)
        sys.exit(int(step[4:]))
manager.close(timeout=10)
"""


@pytest.fixture
def run_afs(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(CHILD))

    def run(steps, *options, **env):
        full = {**os.environ, "AFS_HOME": str(tmp_path / "home"), "STEPS": steps, "AFS_LOAD_PLUGINS": "",
                **env}
        done = subprocess.run([sys.executable, "-m", "afs_core", "run", "--run-id", "wrapper-run", *options, "--",
                               sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=full)
        return done

    return run


def said(done, what):
    """How many console lines announce ``what`` ("Training started", ...)."""
    return sum(1 for line in done.stderr.splitlines() if line.startswith("[afs]") and what in line)


def history(tmp_path):
    entries = Store(tmp_path / "home" / "afs.db").history(limit=50)
    return [(entry.event_type, entry.run_id) for entry in reversed(entries)]


def test_code_that_reports_its_own_run_gives_one_start_and_one_completion_with_its_metrics(run_afs, tmp_path):
    done = run_afs("started,completed", OWN_RUN="own-7")
    assert done.returncode == 0, done.stderr
    assert said(done, "Training started") == 1 and said(done, "Training completed") == 1
    assert history(tmp_path) == [("training_started", "own-7"), ("training_completed", "own-7")]
    completed = Store(tmp_path / "home" / "afs.db").history(limit=1)[0].event
    assert completed["model_name"] == "own-model"
    assert completed["metrics"] == {"accuracy": 0.97} and completed["context"]["final_loss"] == 0.125
    assert completed["context"]["duration"] > 0.05  # the wrapper's wall clock, not the code's 0.01 s


def test_the_same_story_when_both_deliver_synchronously(run_afs):
    done = run_afs("started,completed", AFS_SYNC="true")
    assert done.returncode == 0, done.stderr
    assert said(done, "Training started") == 1 and said(done, "Training completed") == 1


def test_a_command_that_reports_nothing_is_told_by_the_wrapper_under_its_run(run_afs, tmp_path):
    done = run_afs("print")
    assert done.returncode == 0 and "step" in done.stdout
    assert history(tmp_path) == [("training_started", "wrapper-run"), ("training_completed", "wrapper-run")]


def test_a_child_killed_after_it_said_started_gets_one_failure_from_the_wrapper(run_afs, tmp_path):
    done = run_afs("started,kill", OWN_RUN="own-9")
    assert done.returncode == 128 + signal.SIGKILL
    assert said(done, "Training started") == 1 and said(done, "Training failed") == 1
    assert history(tmp_path) == [("training_started", "own-9"), ("training_failed", "own-9")]
    failed = Store(tmp_path / "home" / "afs.db").history(limit=1)[0].event
    assert failed["context"]["signal"] == "SIGKILL"


def test_a_failure_the_code_reported_is_not_reported_again(run_afs, tmp_path):
    done = run_afs("started,failed,exit1", OWN_RUN="own-3")
    assert done.returncode == 1
    assert said(done, "Training failed") == 1
    assert history(tmp_path) == [("training_started", "own-3"), ("training_failed", "own-3")]
    assert "device-side assert" in Store(tmp_path / "home" / "afs.db").history(limit=1)[0].event["error_details"]


def test_a_start_reported_after_the_grace_is_not_said_twice(run_afs, tmp_path):
    started = time.monotonic()
    done = run_afs("sleep1.0,started,completed", "--start-grace", "0.2")
    assert done.returncode == 0, done.stderr
    assert said(done, "Training started") == 1 and said(done, "Training completed") == 1
    assert history(tmp_path)[0] == ("training_started", "wrapper-run")  # the wrapper's, said at the grace
    assert time.monotonic() - started < 30


def test_a_command_that_fails_after_reporting_completion_says_so(run_afs, tmp_path):
    done = run_afs("started,completed,flush,exit3", OWN_RUN="own-4")
    assert done.returncode == 3
    assert said(done, "Training completed") == 0 and said(done, "Training failed") == 1
    failed = Store(tmp_path / "home" / "afs.db").history(limit=1)[0]
    assert failed.run_id == "own-4"
    assert "exited with code 3 after the training reported it completed" in failed.event["message"]


def test_the_command_is_told_its_run(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "afs_core", "run", "--model", "llama", "--run-id", "r-5", "--", sys.executable, "-c",
         "import os; print(os.environ['AFS_RUN_ID'], os.environ['AFS_MODEL_NAME'], "
         "float(os.environ['AFS_RUN_STARTED']) > 0, os.path.exists(os.environ['AFS_RUN_REPORT']))"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "AFS_HOME": str(tmp_path / "home"), "AFS_LOAD_PLUGINS": ""})
    assert done.stdout.split() == ["r-5", "llama", "True", "True"]


def test_callbacks_and_the_decorator_take_the_run_afs_run_named(monkeypatch, afs_plugins):
    from afs_core import notify_on_completion
    from afs_core.integrations.reporter import RunReporter

    monkeypatch.setenv("AFS_RUN_ID", "named-1")
    monkeypatch.setenv("AFS_MODEL_NAME", "bert")
    reporter = RunReporter(None)
    assert (reporter.model_name, reporter.run_id) == ("bert", "named-1")
    assert RunReporter(None, "mine", "r-2").run_id == "r-2"  # given here: kept

    seen = []

    class Recording:
        def __getattr__(self, name):
            return lambda *args, **kwargs: seen.append((name, args[:2]))

    @notify_on_completion(Recording())
    def fit():
        return 0.5

    fit()
    assert seen and all(args == ("bert", "named-1") for _, args in seen)


STALLING = """
import os, sys, time
from afs_core import NotificationManager
manager = NotificationManager.from_env()
def wait_for_the_data_loader(seconds):
    time.sleep(seconds)
print("epoch 1 loss 0.5", flush=True)
mode = os.environ["MODE"]
if mode == "silent":
    wait_for_the_data_loader(3.0)
    manager.log_metrics(step=2, loss=0.4)
    print("epoch 2 loss 0.4", flush=True)
elif mode == "chatty":
    for _ in range(10):
        print("step", flush=True)
        time.sleep(0.3)
elif mode == "metrics":
    for step in range(10):
        manager.log_metrics(step=step, loss=0.5)
        time.sleep(0.3)
manager.close(timeout=10)
"""


@pytest.fixture
def stalling(tmp_path):
    script = tmp_path / "stall.py"
    script.write_text(textwrap.dedent(STALLING))

    def run(mode, **env):
        full = {**os.environ, "AFS_HOME": str(tmp_path / "home"), "MODE": mode, "AFS_LOAD_PLUGINS": "", **env}
        return subprocess.run([sys.executable, "-m", "afs_core", "run", "--run-id", "r-stall", "--stall-after", "1",
                               "--", sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                              env=full)

    return run


def test_a_command_silent_past_the_threshold_is_reported_once_with_its_last_lines_then_its_recovery(
        stalling, tmp_path):
    done = stalling("silent")
    assert done.returncode == 0, done.stderr
    assert said(done, "Training stalled") == 1 and said(done, "Training progressing again") == 1
    assert [kind for kind, _ in history(tmp_path)] == [
        "training_started", "training_stalled", "training_progress_resumed", "training_completed"]
    stalled = next(e for e in Store(tmp_path / "home" / "afs.db").history(limit=20)
                   if e.event_type == "training_stalled")
    assert stalled.run_id == "r-stall" and "printed nothing" in stalled.event["message"]
    assert "epoch 1 loss 0.5" in stalled.event["context"]["traceback"]


@pytest.mark.parametrize("mode", ["chatty", "metrics"])
def test_output_or_progress_the_code_reports_keeps_a_run_from_stalling(stalling, mode):
    done = stalling(mode)
    assert done.returncode == 0, done.stderr
    assert said(done, "Training stalled") == 0


def test_a_stall_the_code_tells_itself_with_its_stack_is_not_told_again(stalling, tmp_path):
    done = stalling("silent", AFS_STALL_AFTER="1")
    assert done.returncode == 0, done.stderr
    assert said(done, "Training stalled") == 1 and said(done, "Training progressing again") == 1
    stalled = next(e for e in Store(tmp_path / "home" / "afs.db").history(limit=20)
                   if e.event_type == "training_stalled")
    assert "wait_for_the_data_loader" in stalled.event["message"]  # the code's own, from its stack


def test_a_command_that_cannot_start_is_one_failure_and_no_start(tmp_path):
    done = subprocess.run([sys.executable, "-m", "afs_core", "run", "--run-id", "r-none", "--",
                           str(tmp_path / "no-such-program")], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "AFS_HOME": str(tmp_path / "home"), "AFS_LOAD_PLUGINS": ""})
    assert done.returncode == 127 and "could not start" in done.stderr
    assert history(tmp_path) == [("training_failed", "r-none")]
