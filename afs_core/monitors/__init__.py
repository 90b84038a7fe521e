"""Monitors: cost, GPU, disk, NaN and out-of-memory checks that alert once, at the right time.

Hand-written checks re-alert on every step or judge a GPU by one sample. These
fire each threshold once per run, wait for a condition to hold before calling
it a problem, say when it recovered, and remember what already fired across a
resume. Everything goes through the manager, so routing, throttling, rank
handling and durability apply.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from afs_core.config import env_float, load_env
from afs_core.errors import ConfigurationError
from afs_core.events import EventType, NotificationLevel
from afs_core.source import detect_world_size

if TYPE_CHECKING:
    from afs_core.manager import NotificationManager
    from afs_core.results import NotifyResult

logger = logging.getLogger("afs.monitors")

SAVE_SECONDS = 30.0  # how often a cost monitor writes its elapsed time to the store

Clock = Callable[[], float]


_default: NotificationManager | None = None
_default_lock = threading.Lock()


def _manager(manager: NotificationManager | None) -> NotificationManager:
    """``manager``, or one process-wide manager from the settings (made once, not per call)."""
    global _default
    if manager is not None:
        return manager
    with _default_lock:
        if _default is None:
            from afs_core.manager import NotificationManager

            _default = NotificationManager.from_env()
        return _default


def _thresholds(raw: str, setting: str) -> list[float]:
    values = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise ConfigurationError(f"{setting}: {part!r} is not a number") from None
        if not (math.isfinite(value) and value > 0):
            raise ConfigurationError(f"{setting}: thresholds must be positive, got {part!r}")
        values.append(value)
    return sorted(set(values))


# -- cost -------------------------------------------------------------------------------------


class CostMonitor:
    """COST_THRESHOLD_EXCEEDED once per threshold per run, highest first when several are
    crossed at once. Cost = ``hourly_rate`` per GPU-hour x ``gpus`` (the whole job:
    ``WORLD_SIZE`` by default) x elapsed hours, or the figure passed to :meth:`update`.
    Fired thresholds and elapsed time are kept in the store by run id, so a resumed run
    neither re-alerts nor starts its clock from zero.

    Settings: ``AFS_GPU_HOURLY_RATE``, ``AFS_COST_THRESHOLDS`` (``5,10,20``), ``AFS_GPU_COUNT``.
    """

    def __init__(
        self,
        manager: NotificationManager | None = None,
        hourly_rate: float | None = None,
        gpus: int | None = None,
        thresholds: Iterable[float] | None = None,
        model_name: str | None = None,
        run_id: str | None = None,
        *,
        clock: Clock = time.monotonic,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = load_env() if env is None else env
        self.manager = _manager(manager)
        self.hourly_rate = hourly_rate if hourly_rate is not None else env_float(env, "AFS_GPU_HOURLY_RATE", 0.0)
        world = detect_world_size(env) or 1
        self.gpus = gpus if gpus is not None else int(env_float(env, "AFS_GPU_COUNT", float(world), minimum=1))
        if thresholds is None:
            self.thresholds = _thresholds(env.get("AFS_COST_THRESHOLDS", ""), "AFS_COST_THRESHOLDS")
        else:
            self.thresholds = _thresholds(",".join(str(t) for t in thresholds), "thresholds")
        if not self.thresholds:
            raise ConfigurationError("CostMonitor needs thresholds (thresholds=[...] or AFS_COST_THRESHOLDS)")
        if self.hourly_rate < 0 or self.gpus < 1:
            raise ConfigurationError("hourly_rate must not be negative and gpus must be at least 1")
        self.model_name, self.run_id = model_name, run_id
        self._clock = clock
        self._lock = threading.Lock()
        state = self._load()
        self.fired: set[float] = set(state.get("fired", []))
        self._elapsed_before = float(state.get("elapsed", 0.0))
        self._started = clock()
        self._saved_at = float("-inf")

    @property
    def _key(self) -> str | None:
        # Only a run id says "the same run, resumed"; without one nothing carries over.
        return f"cost:{self.run_id}" if self.run_id else None

    def _load(self) -> dict[str, Any]:
        if self._key is None:
            return {}
        try:
            raw = self.manager.store.get_state(self._key)
            return json.loads(raw) if raw else {}
        except Exception as exc:  # a busy or unreadable store: start afresh rather than fail
            logger.warning("afs: cost state for %s not read: %s", self.run_id, exc)
            return {}

    def _save(self, elapsed: float, force: bool) -> None:
        if self._key is None:
            return
        now = self._clock()
        if not force and now - self._saved_at < SAVE_SECONDS:
            return  # elapsed time is written every SAVE_SECONDS, a fired threshold at once
        self._saved_at = now
        try:
            self.manager.store.set_state(self._key, json.dumps({"fired": sorted(self.fired), "elapsed": elapsed}))
        except Exception as exc:
            logger.warning("afs: cost state for %s not saved: %s", self.run_id, exc)

    @property
    def elapsed(self) -> float:
        """Seconds of this run so far, earlier sessions of it included."""
        return self._elapsed_before + (self._clock() - self._started)

    def current_cost(self) -> float:
        return self.hourly_rate * self.gpus * self.elapsed / 3600.0

    def update(self, current_cost: float | None = None) -> NotifyResult | None:
        """Check the cost now; returns the alert's result when one fired."""
        with self._lock:
            elapsed = self.elapsed
            cost = self.current_cost() if current_cost is None else float(current_cost)
            crossed = [t for t in self.thresholds if cost >= t and t not in self.fired]
            self.fired.update(crossed)
            self._save(elapsed, force=bool(crossed))
        if not crossed:
            return None
        return self.manager.notify_cost_alert(cost, max(crossed), model_name=self.model_name, run_id=self.run_id)


# -- GPU --------------------------------------------------------------------------------------


@attrs.frozen
class GpuSample:
    device: str  # the index the job sees (CUDA_VISIBLE_DEVICES order), or a UUID
    memory_used: float  # fraction 0..1
    utilization: float  # fraction 0..1
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None


class GpuSource(Protocol):
    """Where samples come from: NVML in real life, a fake in tests."""

    def unavailable_reason(self) -> str | None: ...

    def sample(self) -> list[GpuSample]: ...


def visible_devices(env: Mapping[str, str] | None = None, count: int | None = None) -> list[str]:
    """Physical device indices or UUIDs the job uses, in its own order (CUDA_VISIBLE_DEVICES)."""
    env = os.environ if env is None else env
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return [str(i) for i in range(count or 0)]
    devices = []
    for part in (p.strip() for p in raw.split(",")):
        if not part or part.startswith("-"):
            break  # CUDA stops at the first invalid entry
        devices.append(part)
    return devices


class NvmlSource:
    """Samples through NVML (``pip install afs-core[gpu]``); unavailable without a driver."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = env
        self._handles: list[tuple[str, Any]] | None = None
        self._reason: str | None = None
        self._nvml: Any = None

    def _init(self) -> None:
        if self._handles is not None or self._reason is not None:
            return
        try:
            import pynvml
        except ImportError:
            self._reason = "nvidia-ml-py is not installed (pip install afs-core[gpu])"
            return
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            handles = []
            for position, device in enumerate(visible_devices(self._env, count)):
                if device.isdigit():
                    handle = pynvml.nvmlDeviceGetHandleByIndex(int(device))
                else:
                    handle = pynvml.nvmlDeviceGetHandleByUUID(device)
                handles.append((str(position), handle))
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            self._reason = f"NVML unavailable: {exc}"
            return
        if not handles:
            self._reason = "no GPU visible to this job"
            return
        self._nvml, self._handles = pynvml, handles

    def unavailable_reason(self) -> str | None:
        self._init()
        return self._reason

    def sample(self) -> list[GpuSample]:
        self._init()
        if self._handles is None:
            return []
        samples = []
        for label, handle in self._handles:
            memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
            samples.append(GpuSample(label, memory.used / memory.total if memory.total else 0.0, rates.gpu / 100.0,
                                     int(memory.used), int(memory.total)))
        return samples


class _Sustained:
    """A condition that counts only after ``sustain`` samples in a row; re-arms after it clears."""

    def __init__(self, sustain: int) -> None:
        self.sustain = sustain
        self.streak = 0
        self.alerted = False

    def observe(self, bad: bool) -> str | None:
        """'alert' when it has held long enough, 'recovered' when an alerted one clears."""
        if bad:
            self.streak += 1
            if self.streak >= self.sustain and not self.alerted:
                self.alerted = True
                return "alert"
            return None
        self.streak = 0
        if self.alerted:
            self.alerted = False
            return "recovered"
        return None


class GpuMonitor:
    """GPU_MEMORY_WARNING and GPU_UTILIZATION_LOW after ``sustain`` bad samples in a row,
    per device, once until it recovers (then optionally a recovery message).

    ``start()`` samples every ``interval`` seconds on a background thread; ``stop()``
    ends it. Without a driver or a GPU, ``available`` is False and nothing happens.
    Settings: ``AFS_GPU_MEMORY_THRESHOLD``, ``AFS_GPU_LOW_UTILIZATION``,
    ``AFS_GPU_SUSTAIN``, ``AFS_GPU_INTERVAL``.
    """

    def __init__(
        self,
        manager: NotificationManager | None = None,
        memory_threshold: float | None = None,
        low_utilization: float | None = None,
        sustain: int | None = None,
        interval: float | None = None,
        *,
        recovery_message: bool = True,
        model_name: str | None = None,
        run_id: str | None = None,
        source: GpuSource | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = load_env() if env is None else env
        self.manager = _manager(manager)
        self.memory_threshold = memory_threshold if memory_threshold is not None else env_float(env, "AFS_GPU_MEMORY_THRESHOLD", 0.95)
        self.low_utilization = low_utilization if low_utilization is not None else env_float(env, "AFS_GPU_LOW_UTILIZATION", 0.10)
        self.sustain = int(sustain if sustain is not None else env_float(env, "AFS_GPU_SUSTAIN", 3, minimum=1))
        self.interval = interval if interval is not None else env_float(env, "AFS_GPU_INTERVAL", 15.0, minimum=0.01)
        for name, value in (("memory_threshold", self.memory_threshold), ("low_utilization", self.low_utilization)):
            if not 0 <= value <= 1:
                raise ConfigurationError(f"{name} is a fraction between 0 and 1, got {value!r}")
        self.recovery_message = recovery_message
        self.model_name, self.run_id = model_name, run_id
        self.source = source or NvmlSource(env)
        self._memory: dict[str, _Sustained] = {}
        self._idle: dict[str, _Sustained] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def unavailable_reason(self) -> str | None:
        try:
            return self.source.unavailable_reason()
        except Exception as exc:
            return f"GPU source failed: {exc}"

    @property
    def available(self) -> bool:
        return self.unavailable_reason is None

    def sample_once(self) -> list[NotifyResult]:
        """Take one sample of every device and send what it calls for."""
        if not self.available:
            return []
        try:
            samples = self.source.sample()
        except Exception as exc:
            logger.warning("afs: GPU sample failed: %s", exc)
            return []
        results = []
        for sample in samples:
            memory = self._memory.setdefault(sample.device, _Sustained(self.sustain))
            idle = self._idle.setdefault(sample.device, _Sustained(self.sustain))
            change = memory.observe(sample.memory_used >= self.memory_threshold)
            if change == "alert":
                results.append(self.manager.notify_gpu_memory_warning(
                    sample.memory_used, self.memory_threshold, gpu=sample.device,
                    model_name=self.model_name, run_id=self.run_id))
            elif change == "recovered" and self.recovery_message:
                results.append(self._recovered(sample, f"GPU {sample.device} memory back to {sample.memory_used:.0%}"))
            change = idle.observe(sample.utilization < self.low_utilization)
            if change == "alert":
                results.append(self.manager.notify_gpu_utilization_low(
                    sample.utilization, self.low_utilization, gpu=sample.device,
                    model_name=self.model_name, run_id=self.run_id))
            elif change == "recovered" and self.recovery_message:
                results.append(self._recovered(sample, f"GPU {sample.device} busy again at {sample.utilization:.0%}"))
        return results

    def _recovered(self, sample: GpuSample, title: str) -> NotifyResult:
        return self.manager.notify(title, f"{title}.", event_type=EventType.GPU_UTILIZATION_LOW
                                   if "busy" in title else EventType.GPU_MEMORY_WARNING,
                                   level=NotificationLevel.SUCCESS, model_name=self.model_name,
                                   run_id=self.run_id, gpu=sample.device, recovered=True)

    def start(self) -> GpuMonitor:
        """Sample in the background until :meth:`stop`; does nothing where unavailable."""
        reason = self.unavailable_reason
        if reason is not None:
            logger.info("afs: GPU monitor off: %s", reason)
            return self
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="afs-gpu-monitor", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.interval)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> GpuMonitor:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# -- disk -------------------------------------------------------------------------------------


class DiskMonitor:
    """DISK_SPACE_WARNING when the disk holding ``path`` is fuller than ``threshold``, once
    until it recovers. Call :meth:`check` before each checkpoint save."""

    def __init__(
        self,
        manager: NotificationManager | None = None,
        path: str | os.PathLike[str] = ".",
        threshold: float | None = None,
        *,
        model_name: str | None = None,
        run_id: str | None = None,
        usage: Callable[[str], Any] = shutil.disk_usage,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = load_env() if env is None else env
        self.manager = _manager(manager)
        self.path = os.fspath(path)
        self.threshold = threshold if threshold is not None else env_float(env, "AFS_DISK_THRESHOLD", 0.85)
        if not 0 < self.threshold <= 1:
            raise ConfigurationError(f"threshold is a fraction between 0 and 1, got {self.threshold!r}")
        self.model_name, self.run_id = model_name, run_id
        self._usage = usage
        self.alerted = False

    def check(self) -> NotifyResult | None:
        """Look now; returns the warning's result when one was sent."""
        target = self.path
        while target and not os.path.exists(target):  # a checkpoint folder not made yet
            parent = os.path.dirname(os.path.abspath(target))
            if parent == target:
                break
            target = parent
        try:
            usage = self._usage(target)
        except OSError as exc:
            logger.warning("afs: disk usage of %s unknown: %s", self.path, exc)
            return None
        # As df counts: blocks reserved for root are neither used nor available to us.
        used = usage.used / (usage.used + usage.free) if (usage.used + usage.free) else 0.0
        if used < self.threshold:
            self.alerted = False
            return None
        if self.alerted:
            return None
        self.alerted = True
        return self.manager.notify_disk_space_warning(self.path, used, self.threshold, free_bytes=int(usage.free),
                                                      model_name=self.model_name, run_id=self.run_id)


# -- NaN and out of memory ---------------------------------------------------------------------

_nan_reported: weakref.WeakKeyDictionary[Any, set[str | None]] = weakref.WeakKeyDictionary()
_nan_lock = threading.Lock()


def check_loss(
    manager: NotificationManager | None,
    loss: Any,
    step: int | None = None,
    *,
    model_name: str = "model",
    run_id: str | None = None,
    metric: str = "loss",
) -> bool:
    """True when ``loss`` is a finite number; on NaN or infinity, NAN_DETECTED once per run."""
    try:
        value = float(loss)
    except (TypeError, ValueError):
        return True  # not a number we can judge
    if math.isfinite(value):
        return True
    manager = _manager(manager)
    with _nan_lock:
        reported = _nan_reported.setdefault(manager, set())
        if run_id in reported:
            return False
        reported.add(run_id)
    manager.notify_nan_detected(model_name, run_id or "run", metric=metric, step=step)
    return False


_OOM_NAMES = frozenset({"OutOfMemoryError", "OOMError", "ResourceExhaustedError", "MemoryError"})
_OOM_TEXT = re.compile(r"CUDA out of memory|out of memory|RESOURCE_EXHAUSTED", re.IGNORECASE)
_OOM_FIGURES = re.compile(r"Tried to allocate [\d.]+ [KMGT]i?B[^.]*", re.IGNORECASE)


def is_out_of_memory(error: BaseException) -> bool:
    """Recognise a CUDA or host out-of-memory error without importing torch."""
    return any(cls.__name__ in _OOM_NAMES for cls in type(error).__mro__) or bool(_OOM_TEXT.search(str(error)))


def report_exception(
    manager: NotificationManager | None, error: BaseException, *, model_name: str = "model", run_id: str = "run"
) -> NotifyResult:
    """OUT_OF_MEMORY (with the allocation figures when the message has them) for an OOM,
    TRAINING_FAILED for anything else."""
    manager = _manager(manager)
    if is_out_of_memory(error):
        figures = _OOM_FIGURES.search(str(error))
        return manager.notify_out_of_memory(model_name, run_id, error, memory=figures.group(0) if figures else None)
    return manager.notify_training_failed(model_name, run_id, error)


__all__ = [
    "CostMonitor", "DiskMonitor", "GpuMonitor", "GpuSample", "GpuSource", "NvmlSource", "check_loss",
    "is_out_of_memory", "report_exception", "visible_devices",
]
