"""Monitors: alert once, at the right time, and say when things recovered."""

import os
import subprocess
import sys
from collections import namedtuple

import pytest

from afs_core import EventType, NotificationLevel, NotificationManager
from afs_core.delivery.store import Store
from afs_core.errors import ConfigurationError
from afs_core.monitors import (
    CostMonitor,
    DiskMonitor,
    GpuMonitor,
    GpuSample,
    NvmlSource,
    check_loss,
    is_out_of_memory,
    report_exception,
    visible_devices,
)
from afs_core.testing import RecordingChannel


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def advance(self, hours):
        self.now += hours * 3600


@pytest.fixture
def manager(afs_plugins, tmp_path):
    manager = NotificationManager(plugins=afs_plugins, background=False, store=Store(tmp_path / "afs.db"))
    manager.register_handler("recording", RecordingChannel())
    return manager


def sent(manager):
    return manager.handlers["recording"].messages


# -- cost ----------------------------------------------------------------------------------


def test_each_cost_threshold_fires_once_highest_first(manager):
    clock = FakeClock()
    cost = CostMonitor(manager, hourly_rate=2.50, gpus=8, thresholds=[5.0, 10.0, 20.0], model_name="m",
                       run_id="r", clock=clock, env={})
    assert cost.update() is None  # $0 so far
    clock.advance(0.3)  # 8 GPUs x $2.50 x 0.3 h = $6
    first = cost.update()
    assert first.event.event_type is EventType.COST_THRESHOLD_EXCEEDED
    assert first.event.cost == pytest.approx(6.0) and first.event.context["threshold"] == 5.0
    assert cost.update() is None  # no re-alert on every step
    clock.advance(1.0)  # $26: 10 and 20 crossed together, one alert for 20
    second = cost.update()
    assert second.event.context["threshold"] == 20.0
    assert cost.update() is None and len(sent(manager)) == 2


def test_a_user_supplied_cost(manager):
    cost = CostMonitor(manager, thresholds=[10.0], run_id="r", env={})
    assert cost.update(current_cost=9.99) is None
    assert cost.update(current_cost=12.5).event.cost == 12.5


def test_cost_settings_from_the_environment(manager):
    env = {"AFS_GPU_HOURLY_RATE": "3", "AFS_COST_THRESHOLDS": "20, 5,10", "WORLD_SIZE": "4"}
    cost = CostMonitor(manager, run_id="r", env=env)
    assert (cost.hourly_rate, cost.gpus, cost.thresholds) == (3.0, 4, [5.0, 10.0, 20.0])
    with pytest.raises(ConfigurationError, match="AFS_COST_THRESHOLDS"):
        CostMonitor(manager, env={"AFS_COST_THRESHOLDS": "5,ten"})
    with pytest.raises(ConfigurationError, match="needs thresholds"):
        CostMonitor(manager, env={})


RESUME = """
import json, sys
from afs_core import NotificationManager
from afs_core.monitors import CostMonitor
from afs_core.delivery.store import Store
from afs_core.testing import RecordingChannel

class Clock:
    def __init__(self, start): self.now = start
    def __call__(self): return self.now

manager = NotificationManager(background=False, store=Store(sys.argv[1]))
channel = RecordingChannel()
manager.register_handler("r", channel)
clock = Clock(0.0)
cost = CostMonitor(manager, hourly_rate=1.0, gpus=1, thresholds=[1, 2, 3], run_id="resumed", clock=clock, env={})
clock.now = float(sys.argv[2]) * 3600
cost.update()
print(json.dumps({"elapsed_h": cost.elapsed / 3600, "alerts": [m.splitlines()[0] for m in channel.messages]}))
"""


def test_fired_thresholds_and_elapsed_time_survive_a_resume(tmp_path):
    script = tmp_path / "resume.py"
    script.write_text(RESUME)
    db = str(tmp_path / "afs.db")
    def run(hours):
        return subprocess.run([sys.executable, str(script), db, str(hours)], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "AFS_LOAD_PLUGINS": ""})

    first = run(1.5)
    assert first.returncode == 0, first.stderr
    assert '"alerts": ["\\u26a0\\ufe0f Cost threshold exceeded"]' in first.stdout
    second = run(1.0)  # 1.5 h before + 1 h now: $2.50, threshold 2 is new, 1 is not repeated
    assert '"elapsed_h": 2.5' in second.stdout
    assert second.stdout.count("Cost threshold exceeded") == 1


# -- GPU -----------------------------------------------------------------------------------


class FakeGpus:
    def __init__(self, *rounds, reason=None):
        self.rounds = list(rounds)
        self.reason = reason

    def unavailable_reason(self):
        return self.reason

    def sample(self):
        memory, utilization = self.rounds.pop(0)
        return [GpuSample("0", memory, utilization)]


def test_gpu_memory_warns_only_when_sustained_and_re_arms_after_recovery(manager):
    rounds = [(0.97, 0.9), (0.97, 0.9), (0.50, 0.9), (0.97, 0.9), (0.97, 0.9), (0.97, 0.9), (0.97, 0.9),
              (0.40, 0.9), (0.98, 0.9), (0.98, 0.9), (0.98, 0.9)]
    gpu = GpuMonitor(manager, memory_threshold=0.95, low_utilization=0.10, sustain=3, source=FakeGpus(*rounds), env={})
    kinds = [[(r.event.event_type, r.event.level) for r in gpu.sample_once()] for _ in rounds]
    warning = (EventType.GPU_MEMORY_WARNING, NotificationLevel.WARNING)
    recovered = (EventType.GPU_MEMORY_WARNING, NotificationLevel.SUCCESS)
    assert kinds == [[], [], [], [], [], [warning], [], [recovered], [], [], [warning]]


def test_low_utilization_needs_sustain_too(manager):
    gpu = GpuMonitor(manager, low_utilization=0.10, sustain=2, recovery_message=False,
                     source=FakeGpus((0.5, 0.05), (0.5, 0.04), (0.5, 0.03), (0.5, 0.9)), env={})
    results = [gpu.sample_once() for _ in range(4)]
    assert [len(r) for r in results] == [0, 1, 0, 0]
    assert results[1][0].event.event_type is EventType.GPU_UTILIZATION_LOW


def test_the_background_sampler_runs_and_stops(manager):
    source = FakeGpus(*[(0.99, 0.9)] * 500)
    gpu = GpuMonitor(manager, sustain=2, interval=0.01, source=source, env={})
    with gpu:
        import time

        deadline = time.monotonic() + 5
        while not sent(manager) and time.monotonic() < deadline:
            time.sleep(0.01)
    assert gpu._thread is not None and not gpu._thread.is_alive()
    assert len(sent(manager)) == 1


def test_without_a_gpu_the_monitor_is_unavailable_and_quiet(manager):
    gpu = GpuMonitor(manager, source=FakeGpus(reason="no GPU visible to this job"), env={})
    assert not gpu.available and gpu.sample_once() == [] and gpu.start()._thread is None


def test_the_real_nvml_module_says_unavailable_here(manager):
    import pynvml  # noqa: F401  (nvidia-ml-py is a test dependency)

    gpu = GpuMonitor(manager, source=NvmlSource({}), env={})
    assert not gpu.available and "NVML" in gpu.unavailable_reason


def test_device_indices_follow_cuda_visible_devices():
    assert visible_devices({}, 2) == ["0", "1"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "3,1"}) == ["3", "1"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "GPU-abc,-1,2"}) == ["GPU-abc"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": ""}) == []


# -- disk, NaN, OOM ---------------------------------------------------------------------------

Usage = namedtuple("Usage", "total used free")


def test_disk_warns_once_until_it_recovers(manager, tmp_path):
    readings = iter([Usage(100, 50, 50), Usage(100, 90, 10), Usage(100, 95, 5), Usage(100, 60, 40), Usage(100, 86, 14)])
    disk = DiskMonitor(manager, path=tmp_path / "checkpoints", threshold=0.85, usage=lambda p: next(readings), env={})
    assert [disk.check() is not None for _ in range(5)] == [False, True, False, False, True]
    assert "90% full" in sent(manager)[0]


def test_disk_with_the_real_filesystem(manager, tmp_path):
    assert DiskMonitor(manager, path=tmp_path, threshold=1.0, env={}).check() is None
    assert DiskMonitor(manager, path=tmp_path, threshold=0.0001, env={}).check().event.event_type is EventType.DISK_SPACE_WARNING


def test_nan_is_reported_once_per_run(manager):
    assert check_loss(manager, 0.5, step=1, run_id="r")
    assert not check_loss(manager, float("nan"), step=2, model_name="m", run_id="r")
    assert not check_loss(manager, float("inf"), step=3, model_name="m", run_id="r")
    assert not check_loss(manager, float("nan"), step=9, model_name="m", run_id="other")
    assert len(sent(manager)) == 2 and "step 2" in sent(manager)[0]


def test_out_of_memory_is_recognised_without_torch(manager):
    class OutOfMemoryError(RuntimeError):  # as torch.cuda.OutOfMemoryError is named
        pass

    cuda = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total capacity)")
    assert is_out_of_memory(OutOfMemoryError("x")) and is_out_of_memory(cuda) and is_out_of_memory(MemoryError())
    assert not is_out_of_memory(ValueError("shape mismatch"))
    result = report_exception(manager, cuda, model_name="m", run_id="r")
    assert result.event.event_type is EventType.OUT_OF_MEMORY
    assert result.event.context["memory"].startswith("Tried to allocate 2.00 GiB")
    other = report_exception(manager, ValueError("shape mismatch"), model_name="m", run_id="r")
    assert other.event.event_type is EventType.TRAINING_FAILED


def test_without_a_run_id_nothing_carries_over_to_the_next_run(manager):
    clock = FakeClock()
    monday = CostMonitor(manager, hourly_rate=1.0, gpus=1, thresholds=[10.0], model_name="m", clock=clock, env={})
    clock.advance(12)
    assert monday.update() is not None
    tuesday = CostMonitor(manager, hourly_rate=1.0, gpus=1, thresholds=[10.0], model_name="m", clock=clock, env={})
    assert tuesday.current_cost() == 0.0 and tuesday.fired == set()


def test_disk_usage_is_counted_as_df_does(manager, tmp_path):
    # 80 used, 10 available to us, 10 reserved for root: 89 % full, as df says, not 80 %.
    disk = DiskMonitor(manager, path=tmp_path, threshold=0.85, usage=lambda p: Usage(100, 80, 10), env={})
    assert disk.check() is not None


def test_check_loss_without_a_manager_uses_one_for_the_process(tmp_path, monkeypatch):
    import threading

    import afs_core.monitors._default as monitors_module

    monkeypatch.setattr(monitors_module, "_default", None)
    monkeypatch.setenv("AFS_CONSOLE", "false")
    before = threading.active_count()
    for step in range(5):
        check_loss(None, float("nan"), step=step, run_id="run-1")
    assert monitors_module._default is not None
    assert threading.active_count() - before <= 2
    monitors_module._default.close(timeout=1)


def test_gpu_alerts_and_recoveries_are_not_throttled_away(afs_plugins, tmp_path):
    channel = RecordingChannel()
    manager = NotificationManager(plugins=afs_plugins, store=Store(tmp_path / "afs.db"))
    manager.register_handler("r", channel)  # default policy: 600 s throttle window
    rounds = [(0.99, 0.9)] * 2 + [(0.5, 0.9)] + [(0.99, 0.9)] * 2
    gpu = GpuMonitor(manager, sustain=2, source=FakeGpus(*rounds), env={})
    for _ in rounds:
        gpu.sample_once()
    manager.close(timeout=5)
    titles = [m.splitlines()[0] for m in channel.messages]
    assert titles == ["⚠️ GPU 0 memory high", "✅ GPU 0 memory back to 50%", "⚠️ GPU 0 memory high"]
