"""A run that stops making progress: TRAINING_STALLED once, naming where the main thread
is, and TRAINING_PROGRESS_RESUMED once when progress comes back."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import traceback

import pytest

from afs_core import builders
from afs_core.errors import ConfigurationError
from afs_core.events import EventType
from afs_core.integrations.reporter import RunReporter
from afs_core.manager import NotificationManager
from afs_core.source import forget_current_source
from afs_core.testing import ManualClock, RecordingChannel

STALLED, RESUMED = EventType.TRAINING_STALLED, EventType.TRAINING_PROGRESS_RESUMED
BOUND = 10.0  # the longest any wait here may take; none takes it when things work


class Channel(RecordingChannel):
    """Records events (not rendered text), and lets a test wait for one."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = threading.Event()

    def format(self, event):
        return event

    def deliver(self, message):
        super().deliver(message)
        self.arrived.set()

    def of(self, event_type):
        return [event for event in self.messages if event.event_type is event_type]

    def wait_for(self, event_type, count=1):
        deadline = time.monotonic() + BOUND
        while len(self.of(event_type)) < count and time.monotonic() < deadline:
            self.arrived.wait(0.05)
            self.arrived.clear()
        return self.of(event_type)


@pytest.fixture
def channel():
    return Channel()


@pytest.fixture
def manager(afs_plugins, channel):
    manager = NotificationManager(plugins=afs_plugins, background=False)
    manager.register_channel("recording", channel)
    yield manager
    manager.close()


# -- the threshold ------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [("45", 45.0), ("90s", 90.0), ("30m", 1800.0), ("2h", 7200.0),
                                                ("1h30m", 5400.0)])
def test_afs_stall_after_starts_the_watchdog_with_its_duration(afs_plugins, monkeypatch, value, seconds):
    monkeypatch.setenv("AFS_STALL_AFTER", value)
    monkeypatch.setenv("AFS_SYNC", "true")
    manager = NotificationManager.from_env(plugins=afs_plugins)
    try:
        assert manager._watchdog is not None and manager._watchdog.running
        assert manager._watchdog.stall_after == seconds
    finally:
        manager.close()
    assert manager._watchdog is None


@pytest.mark.parametrize("value", ["soon", "30 minutes", "-5m", "0", "1h-30m"])
def test_a_bad_afs_stall_after_stops_from_env_naming_the_setting(afs_plugins, monkeypatch, value):
    monkeypatch.setenv("AFS_STALL_AFTER", value)
    with pytest.raises(ConfigurationError, match="AFS_STALL_AFTER must be a duration such as 90s, 30m"):
        NotificationManager.from_env(plugins=afs_plugins)


def test_without_afs_stall_after_nothing_watches(afs_plugins, monkeypatch):
    monkeypatch.setenv("AFS_SYNC", "true")
    manager = NotificationManager.from_env(plugins=afs_plugins)
    assert manager._watchdog is None
    manager.mark_progress("r")  # harmless without a watchdog
    manager.close()


def test_watch_progress_takes_durations_as_text_and_refuses_nonsense(manager, manual_clock):
    assert manager.watch_progress("1h30m", clock=manual_clock).stall_after == 5400.0
    for bad in (0, -1.0, float("nan"), float("inf"), True, "soon"):
        with pytest.raises(ValueError):
            manager.watch_progress(bad, clock=manual_clock)


# -- once per stall, then once when progress comes back ---------------------------------------


class ParkingClock(ManualClock):
    """A manual clock whose waits end only when it is moved past their deadline or they are
    woken, and which says when the watchdog has sat down in a new one."""

    def __init__(self) -> None:
        super().__init__(real_slice=3 * BOUND)
        self.entered = 0
        self.parked = threading.Event()

    def wait(self, event, timeout):
        self.entered += 1
        self.parked.set()
        try:
            return super().wait(event, timeout)
        finally:
            self.parked.clear()

    def settled(self, after: int) -> bool:
        deadline = time.monotonic() + BOUND
        while not (self.entered > after and self.parked.is_set()) and time.monotonic() < deadline:
            time.sleep(0.001)
        return self.entered > after and self.parked.is_set()


def test_a_stall_is_told_once_and_its_end_once_then_a_new_stall_again(manager, channel):
    manual_clock = ParkingClock()
    watchdog = manager.watch_progress(30, model_name="tiny", run_id="run-1", clock=manual_clock)
    manual_clock.advance(29)
    assert watchdog.check() == pytest.approx(1.0) and channel.messages == []

    manual_clock.advance(2)
    (stall,) = channel.wait_for(STALLED)
    assert stall.level.value == "warning" and (stall.model_name, stall.run_id) == ("tiny", "run-1")
    assert stall.message.startswith("Run run-1: no progress for 31s") and stall.context["silent_for"] == 31.0
    entered = manual_clock.entered
    manual_clock.advance(600)
    watchdog.check()
    assert len(channel.of(STALLED)) == 1 and watchdog.stalled  # still the same stall: not told again

    manual_clock.advance(9)
    assert manual_clock.settled(after=entered)  # asleep till the clock moves: progress must wake it
    manager.mark_progress()
    (resumed,) = channel.wait_for(RESUMED)
    assert resumed.level.value == "info" and resumed.run_id == "run-1"
    assert resumed.context["stalled_for"] == 640.0 and "after 10m 40s without any" in resumed.message
    manager.mark_progress()
    watchdog.check()
    assert len(channel.of(RESUMED)) == 1 and not watchdog.stalled

    manual_clock.advance(31)
    assert len(channel.wait_for(STALLED, count=2)) == 2


def test_events_of_the_run_are_progress_and_the_machines_are_not(manager, channel, manual_clock):
    watchdog = manager.watch_progress(30, clock=manual_clock)
    manual_clock.advance(20)
    manager.notify_epoch_completed("m", "run-9", 1)
    manual_clock.advance(20)
    assert watchdog.check() == pytest.approx(10.0)
    manager.notify_gpu_utilization_low(0.01, 0.1, gpu=0, model_name="m", run_id="run-9")  # a hang's idle GPU
    manual_clock.advance(11)
    (stall,) = channel.wait_for(STALLED)
    assert (stall.model_name, stall.run_id) == ("m", "run-9")  # the last run seen in an event


def test_log_metrics_and_the_callbacks_step_hooks_are_progress(manager, channel, manual_clock):
    watchdog = manager.watch_progress(30, clock=manual_clock)
    reporter = RunReporter(manager, "m", "run-3")
    for tick in range(5):
        manual_clock.advance(20)
        (manager.log_metrics(step=tick, loss=0.5) if tick % 2 else reporter.step_value(0.4, step=tick))
        assert watchdog.check() == pytest.approx(30.0)
    assert channel.of(STALLED) == []
    manual_clock.advance(31)
    assert channel.wait_for(STALLED)[0].run_id == "run-3"  # the step hooks named the run


def test_a_finished_run_does_not_stall_until_progress_comes_again(manager, channel, manual_clock):
    watchdog = manager.watch_progress(30, clock=manual_clock)
    manager.notify_training_completed("m", "run-1", 60.0)
    manual_clock.advance(3600)
    watchdog.check()
    assert channel.of(STALLED) == []
    manager.notify_training_started("m", "run-2")
    manual_clock.advance(31)
    assert channel.wait_for(STALLED)[0].run_id == "run-2"
    manager.notify_training_failed("m", "run-2", "NCCL timeout")  # the stall ends in a failure: no "resumed"
    watchdog.check()
    assert not watchdog.stalled and channel.of(RESUMED) == []


def test_the_stall_names_the_watched_run_else_the_one_afs_run_named(afs_plugins, channel, manual_clock, monkeypatch):
    monkeypatch.setenv("AFS_RUN_ID", "afs-run-42")
    monkeypatch.setenv("AFS_MODEL_NAME", "from-afs-run")
    manager = NotificationManager(plugins=afs_plugins, background=False)
    manager.register_channel("recording", channel)
    try:
        manager.watch_progress(30, clock=manual_clock)
        manual_clock.advance(31)
        (stall,) = channel.wait_for(STALLED)
        assert (stall.model_name, stall.run_id) == ("from-afs-run", "afs-run-42")
        manager.watch_progress(30, model_name="given", run_id="given-run", clock=manual_clock)
        manual_clock.advance(31)
        assert (channel.wait_for(STALLED, count=2)[1].run_id) == "given-run"
    finally:
        manager.close()


def test_close_stops_the_watchdog(manager, channel, manual_clock):
    watchdog = manager.watch_progress(30, clock=manual_clock)
    manager.close()
    assert not watchdog.running
    watchdog._thread.join(BOUND)
    assert not watchdog._thread.is_alive()
    manual_clock.advance(3600)
    manager.mark_progress()
    assert channel.messages == []


def test_a_second_watch_replaces_the_first(manager, manual_clock):
    first = manager.watch_progress(30, clock=manual_clock)
    second = manager.watch_progress(60, clock=manual_clock)
    first._thread.join(BOUND)
    assert not first._thread.is_alive() and second.running and manager._watchdog is second


# -- where the main thread is ----------------------------------------------------------------


def test_the_stall_carries_the_main_threads_stack_and_names_the_users_function(manager, channel, manual_clock):
    assert threading.current_thread() is threading.main_thread()
    manager.watch_progress(30, clock=manual_clock)

    def wait_for_the_data_loader():
        manual_clock.advance(31)
        return channel.arrived.wait(BOUND)  # stuck here, in the standard library's threading.wait

    assert wait_for_the_data_loader()
    (stall,) = channel.wait_for(STALLED)
    assert "the main thread is in channel.arrived.wait (test_stall.py:" in stall.message
    assert stall.message.endswith(", in wait_for_the_data_loader).")
    stack = stall.context["traceback"]
    assert stack.startswith("Stack of the main thread (most recent call last")
    assert 'in wait_for_the_data_loader\n    return channel.arrived.wait(BOUND)' in stack
    assert stack.rstrip().splitlines()[-2].lstrip().startswith('File "') and "threading.py" in stack


def _frames(*places):
    return [traceback.FrameSummary(path, line, name, line=source) for path, line, name, source in places]


def test_the_message_names_the_innermost_frame_of_the_users_code():
    stdlib = os.path.dirname(os.__file__)
    frames = _frames(("/home/me/train.py", 90, "<module>", "main()"),
                     ("/home/me/train.py", 42, "wait_for_batch", "batch = next(loader_iter)"),
                     (f"{stdlib}/queue.py", 171, "get", "self.not_empty.wait()"),
                     ("/venv/lib/python3.11/site-packages/torch/x.py", 7, "f", "pass"))
    event = builders.training_stalled("m", "r", 1800, stack=frames, last_progress="2026-12-06 12:00:00 UTC")
    assert event.message == "Run r: no progress for 30m 00s; the main thread is in next (train.py:42, in wait_for_batch)."
    assert event.context["last_progress"] == "2026-12-06 12:00:00 UTC"
    assert "queue.py" in event.context["traceback"] and "site-packages/torch" in event.context["traceback"]


def test_a_long_stack_keeps_its_innermost_frames():
    frames = _frames(*[("/w/train.py", n, f"level_{n}", f"level_{n + 1}()") for n in range(40)])
    stack = builders.training_stalled("m", "r", 60, stack=frames).context["traceback"]
    assert "25 outer frames left out" in stack and "level_39" in stack and "level_0\n" not in stack


def test_a_stack_without_user_code_names_its_innermost_frame_and_no_stack_says_less():
    frames = _frames(("/venv/lib/python3.11/site-packages/accelerate/x.py", 3, "launch", "run()"),
                     ("/venv/lib/python3.11/site-packages/torch/y.py", 9, "barrier", "work.wait()"))
    assert "is in work.wait (y.py:9, in barrier)" in builders.training_stalled(None, None, 90, stack=frames).message
    bare = builders.training_stalled(None, None, 90)
    assert bare.message == "No progress for 1m 30s." and bare.title == "Training stalled"
    assert "traceback" not in bare.context


# -- ranks -------------------------------------------------------------------------------


def test_a_stall_on_another_rank_is_logged_there_and_not_sent(manager, channel, manual_clock, monkeypatch, caplog):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    forget_current_source()
    caplog.set_level(logging.INFO, logger="afs")
    watchdog = manager.watch_progress(30, model_name="m", run_id="r", clock=manual_clock)
    manual_clock.advance(31)
    deadline = time.monotonic() + BOUND
    while not watchdog.stalled and time.monotonic() < deadline:
        watchdog.check()
    assert watchdog.stalled and channel.messages == []
    held = [r for r in caplog.records if r.levelno == logging.WARNING and "no progress for 31s" in r.getMessage()]
    assert len(held) == 1 and "not sent: held back on rank 1" in held[0].getMessage()

    manager.all_ranks = True  # AFS_ALL_RANKS=true: every rank sends its own, with its own stack
    manager.mark_progress()
    manual_clock.advance(31)
    (stall,) = channel.wait_for(STALLED)
    assert stall.source.rank == 1


# -- forks -------------------------------------------------------------------------------


class LockFreeClock(ManualClock):
    """Reads the time without the clock's lock: the parent's watchdog may hold that lock
    at the moment of the fork, and the child would wait on it for ever."""

    def monotonic(self):
        return self._mono

    def time(self):
        return self._wall


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_inherits_no_running_or_stalled_watchdog(manager, channel):
    manual_clock = LockFreeClock()
    watchdog = manager.watch_progress(30, clock=manual_clock)
    manual_clock.advance(31)
    assert channel.wait_for(STALLED) and watchdog.stalled
    pid = os.fork()
    if pid == 0:  # the child: report by exit code only, never return into pytest
        code = 1
        try:
            inherited = manager._watchdog
            inherited.mark()  # must not wait on a lock the parent's thread held
            checks = [not inherited.running, not inherited.stalled, inherited.check(stall=False) > 0,
                      manager.watch_progress(30, clock=manual_clock).running]
            code = 0 if all(checks) else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + BOUND
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    assert os.waitstatus_to_exitcode(done[1]) == 0
    assert watchdog.running and watchdog.stalled  # the parent's is untouched
    assert len(channel.of(STALLED)) == 1  # and the child told nothing


# -- for real: a training script that hangs, on two ranks -----------------------------------------

SCRIPT = """
import time
from afs_core import NotificationManager

manager = NotificationManager.from_env()
manager.notify_training_started("tiny", "run-7")

def wait_for_the_data_loader():
    deadline = time.monotonic() + 10
    while not manager._watchdog.stalled and time.monotonic() < deadline:
        time.sleep(0.02)

wait_for_the_data_loader()
manager.log_metrics(step=1, loss=0.5)
manager.close()
"""


def test_a_hanging_script_is_reported_once_from_rank_0_and_recovers_once(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    base = {k: v for k, v in os.environ.items() if not k.startswith("AFS_")}
    base.update(AFS_HOME=str(tmp_path / "home"), AFS_SYNC="true", AFS_STALL_AFTER="1s", AFS_LOAD_PLUGINS="",
                WORLD_SIZE="2", PYTHONUNBUFFERED="1", NO_COLOR="1")
    ranks = [subprocess.Popen([sys.executable, str(script)], env={**base, "RANK": str(rank)}, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    (out0, err0), (out1, err1) = (rank.communicate(timeout=30) for rank in ranks)
    assert [rank.returncode for rank in ranks] == [0, 0], err0 + err1

    assert err0.count("Training stalled: tiny") == 1, err0
    assert err0.count("Training progressing again: tiny") == 1, err0
    assert "the main thread is in time.sleep (train.py:" in err0 and "in wait_for_the_data_loader)" in err0
    assert 'File "' in err0 and "in wait_for_the_data_loader\n" in err0.replace("\r", "")  # the stack itself
    assert "Run run-7 made progress again after" in err0

    assert "Training stalled" not in err1 and "Training progressing again" not in err1, err1
    assert "no progress for" in err1 and "not sent: held back on rank 1" in err1  # detected, logged, held back


def test_the_afs_command_never_watches_itself(afs_plugins, monkeypatch):
    # `afs run` waits hours for its command: its own silence is not a stall (the command,
    # if it uses afs_core, reads AFS_STALL_AFTER itself). A bad value is still refused.
    import argparse

    from afs_core.cli.common import open_manager

    monkeypatch.setenv("AFS_STALL_AFTER", "1s")
    monkeypatch.setenv("AFS_SYNC", "true")
    manager = open_manager(argparse.Namespace(env_file=None, channel=None))
    assert manager._watchdog is None
    manager.close()
    monkeypatch.setenv("AFS_STALL_AFTER", "soon")
    with pytest.raises(ConfigurationError, match="AFS_STALL_AFTER"):
        open_manager(argparse.Namespace(env_file=None, channel=None))
