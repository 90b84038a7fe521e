"""Recorded metrics: ``log_metrics`` sends nothing and records the run's curves; an
end-of-run event carries its run's loss curve; the store keeps them bounded."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

from afs_core import builders
from afs_core.delivery.metrics import MetricPoint, downsample
from afs_core.delivery.store import Store
from afs_core.integrations.reporter import RunReporter
from afs_core.manager import NotificationManager
from afs_core.monitors.loss import check_loss
from afs_core.testing import RecordingChannel


def manager_on(tmp_path, afs_plugins, channel=None):
    manager = NotificationManager(plugins=afs_plugins, store=Store(tmp_path / "afs.db"))
    if channel is not None:
        manager.register_channel("recording", channel)
    return manager


class Scalar:
    """A framework's 0-d tensor: a number only through .item()."""

    def __init__(self, value):
        self.value = value

    def item(self):
        return self.value


def test_log_metrics_records_each_numeric_metric_by_step_and_sends_nothing(tmp_path, afs_plugins):
    channel = RecordingChannel()
    manager = manager_on(tmp_path, afs_plugins, channel)
    for step in range(5):
        manager.log_metrics(step=step, run_id="r1", model_name="bert", loss=1.0 / (step + 1), lr=Scalar(0.1),
                            phase="warmup", flag=True)
    assert manager.close(timeout=10)
    series = Store(tmp_path / "afs.db").metric_series("r1")
    assert sorted(series) == ["loss", "lr"]  # text and booleans are not drawn
    assert [(p.step, p.value) for p in series["loss"]] == [(s, 1.0 / (s + 1)) for s in range(5)]
    assert [p.value for p in series["lr"]] == [0.1] * 5
    assert channel.messages == []
    assert Store(tmp_path / "afs.db").history(limit=5) == []


def test_without_a_run_id_the_last_run_seen_is_used(tmp_path, afs_plugins):
    manager = manager_on(tmp_path, afs_plugins)
    manager.mark_progress("r-seen", "gpt")
    manager.log_metrics(step=1, loss=0.5)
    manager.close(timeout=10)
    assert [p.value for p in Store(tmp_path / "afs.db").metric_series("r-seen")["loss"]] == [0.5]


class EventChannel(RecordingChannel):
    """Records the events themselves, as the channel was given them."""

    def format(self, event):
        return event


def test_an_end_of_run_event_carries_its_runs_loss_curve(tmp_path, afs_plugins):
    channel = EventChannel()
    manager = manager_on(tmp_path, afs_plugins, channel)
    losses = [2.0 * math.exp(-step / 100) for step in range(1000)]
    for step, loss in enumerate(losses):
        manager.log_metrics(step=step, run_id="r2", model_name="bert", loss=loss)
    manager.notify_epoch_completed("bert", "r2", 1)
    manager.notify_training_completed("bert", "r2", 60.0, final_loss=losses[-1])
    manager.close(timeout=10)
    by_type = {e.event_type: e.event for e in Store(tmp_path / "afs.db").history(run_id="r2")}
    curve = by_type["training_completed"]["context"]["loss_curve"]
    assert 100 <= len(curve) <= 200
    assert curve[0] == [0.0, losses[0]] and curve[-1] == [999.0, losses[-1]]
    assert [x for x, _ in curve] == sorted(x for x, _ in curve)
    assert "loss_curve" not in by_type["epoch_completed"]["context"]  # not an end-of-run event
    sent = {e.event_type.value: e for e in channel.messages}
    assert [list(p) for p in sent["training_completed"].context["loss_curve"]] == curve  # what the channel was given to draw


def test_a_run_without_a_loss_gets_no_curve_and_a_caller_given_curve_is_kept(tmp_path, afs_plugins):
    manager = manager_on(tmp_path, afs_plugins, RecordingChannel())
    for step in range(10):
        manager.log_metrics(step=step, run_id="r3", accuracy=step / 10)
    manager.notify_training_completed("m", "r3", 60.0)
    failed = builders.training_failed("m", "r3", "boom")
    manager.send_event(failed.evolve(context={**failed.context, "loss_curve": [[0, 1.0], [1, 0.5]]}))
    manager.close(timeout=10)
    by_type = {e.event_type: e.event for e in Store(tmp_path / "afs.db").history(run_id="r3")}
    assert "loss_curve" not in by_type["training_completed"]["context"]
    assert by_type["training_failed"]["context"]["loss_curve"] == [[0, 1.0], [1, 0.5]]


def test_events_metrics_are_recorded_too(tmp_path, afs_plugins):
    manager = manager_on(tmp_path, afs_plugins, RecordingChannel())
    manager.notify_evaluation_completed("m", "r4", {"accuracy": 0.9, "f1": 0.8})
    manager.notify_evaluation_completed("m", "r4", {"accuracy": 0.95, "f1": 0.85})
    manager.close(timeout=10)
    series = Store(tmp_path / "afs.db").metric_series("r4")
    assert [p.value for p in series["accuracy"]] == [0.9, 0.95] and [p.value for p in series["f1"]] == [0.8, 0.85]


def test_the_framework_reporter_and_check_loss_record_through_log_metrics(tmp_path, afs_plugins):
    manager = manager_on(tmp_path, afs_plugins)
    reporter = RunReporter(manager, model_name="m", run_id="r5")
    for step in range(3):
        reporter.step_value(1.0 - step / 10, step=step)
    reporter.loss(0.8, step=2)  # the epoch's loss after its last batch: recorded once
    reporter.step_value(5.0, step=2, metric="grad_norm")
    check_loss(manager, 0.7, step=3, run_id="r5")
    manager.close(timeout=10)
    series = Store(tmp_path / "afs.db").metric_series("r5")
    assert [(p.step, p.value) for p in series["loss"]] == [(0, 1.0), (1, 0.9), (2, 0.8), (3, 0.7)]
    assert [p.value for p in series["grad_norm"]] == [5.0]


def test_downsampling_keeps_the_extremes_the_first_and_the_last():
    values = [math.sin(i / 50) + (10.0 if i == 4321 else 0.0) - (7.0 if i == 777 else 0.0) for i in range(10_000)]
    points = [MetricPoint(i, v, float(i)) for i, v in enumerate(values)]
    kept = downsample(points, 500)
    assert len(kept) <= 500
    assert kept[0] == points[0] and kept[-1] == points[-1]
    assert max(p.value for p in kept) == max(values) and min(p.value for p in kept) == min(values)
    assert [p.step for p in kept] == sorted(p.step for p in kept)
    assert downsample(points[:20], 500) == points[:20]


def test_the_store_keeps_recorded_metrics_bounded(tmp_path, afs_plugins):
    store = Store(tmp_path / "afs.db")
    manager = NotificationManager(plugins=afs_plugins, store=store)
    for step in range(300):
        manager.log_metrics(step=step, run_id="r6", loss=float(step))
    manager.close(timeout=10)
    store.prune(max_metrics=100)
    kept = store.metric_series("r6")["loss"]
    assert [p.step for p in kept] == list(range(200, 300))  # the newest


def test_processes_sharing_a_store_keep_each_others_metrics(tmp_path):
    code = textwrap.dedent("""
        import sys
        from afs_core import NotificationManager
        manager = NotificationManager.from_env()
        for step in range(50):
            manager.log_metrics(step=step, run_id="shared", model_name=sys.argv[1], **{sys.argv[1]: float(step)})
    """)  # no close(): the exit hook records what waits
    env = {**os.environ, "AFS_HOME": str(tmp_path / "home"), "AFS_LOAD_PLUGINS": ""}
    children = [subprocess.Popen([sys.executable, "-c", code, name], env=env) for name in ("a", "b")]
    assert [child.wait(timeout=60) for child in children] == [0, 0]
    series = Store(tmp_path / "home" / "afs.db").metric_series("shared")
    assert [p.value for p in series["a"]] == [float(s) for s in range(50)]
    assert [p.value for p in series["b"]] == [float(s) for s in range(50)]


def test_a_diverged_run_is_stored_as_json_every_reader_takes(tmp_path, afs_plugins):
    manager = manager_on(tmp_path, afs_plugins, RecordingChannel())
    manager.notify_training_completed("m", "r-nan", 60.0, final_loss=float("nan"))
    manager.notify_evaluation_completed("m", "r-nan", {"loss": float("inf"), "acc": 0.5})
    manager.close(timeout=10)
    import sqlite3

    db = sqlite3.connect(tmp_path / "afs.db")
    assert [valid for (valid,) in db.execute("SELECT json_valid(data) FROM events")] == [1, 1]
    stored = {e.event_type: e.event for e in Store(tmp_path / "afs.db").history(run_id="r-nan")}
    assert stored["evaluation_completed"]["metrics"]["loss"] == "Infinity"


def test_metrics_out_of_any_range_are_skipped_and_block_nothing(tmp_path, afs_plugins):
    channel = RecordingChannel()
    manager = manager_on(tmp_path, afs_plugins, channel)
    manager.log_metrics(step=10**20, run_id="r-big", loss=1.0)  # a step SQLite cannot hold: kept without it
    manager.log_metrics(step=-(2**63) - 1, run_id="r-big", loss=2.0)
    manager.log_metrics(step=1, run_id="r-big", loss=10**400, acc=0.5)  # a value no float holds: skipped
    manager.notify_training_completed("m", "r-big", 60.0)
    assert manager.close(timeout=10)
    assert len(channel.messages) == 1  # the event was not held up behind them
    series = Store(tmp_path / "afs.db").metric_series("r-big")
    assert [p.value for p in series["acc"]] == [0.5]
    assert sorted(p.value for p in series["loss"]) == [1.0, 2.0] and {p.step for p in series["loss"]} == {None}


def test_a_resumed_run_is_drawn_in_step_order(tmp_path, afs_plugins):
    manager = manager_on(tmp_path, afs_plugins)
    for step in [*range(0, 100), *range(80, 150)]:  # resumed from the checkpoint of step 80
        manager.log_metrics(step=step, run_id="r-resumed", loss=1.0 / (step + 1))
    manager.close(timeout=10)
    steps = [p.step for p in Store(tmp_path / "afs.db").metric_series("r-resumed")["loss"]]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == 149


def test_a_long_series_is_thinned_in_the_store_keeping_its_extremes(tmp_path, afs_plugins):
    store = Store(tmp_path / "afs.db")
    manager = NotificationManager(plugins=afs_plugins, store=store)
    values = [math.sin(step / 300) + (5.0 if step == 31_337 else 0.0) - (3.0 if step == 7_001 else 0.0)
              for step in range(50_000)]
    for step, value in enumerate(values):
        manager.log_metrics(step=step, run_id="r-long", loss=value)
    manager.close(timeout=30)
    kept = store.metric_series("r-long", max_points=500)["loss"]
    assert len(kept) <= 500
    assert (kept[0].step, kept[-1].step) == (0, 49_999)
    assert max(p.value for p in kept) == max(values) and min(p.value for p in kept) == min(values)
    assert [p.step for p in kept] == sorted(p.step for p in kept)
