"""GpuMonitor: memory and utilisation alerts after several bad samples in a row, and recovery."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from afs_core import builders
from afs_core.config import env_float, load_env
from afs_core.errors import ConfigurationError
from afs_core.monitors._default import default_manager

if TYPE_CHECKING:
    from afs_core.manager import NotificationManager
    from afs_core.results import NotifyResult

logger = logging.getLogger("afs.monitors")


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
        self.manager = default_manager(manager)
        if memory_threshold is None:
            memory_threshold = env_float(env, "AFS_GPU_MEMORY_THRESHOLD", 0.95)
        if low_utilization is None:
            low_utilization = env_float(env, "AFS_GPU_LOW_UTILIZATION", 0.10)
        self.memory_threshold, self.low_utilization = memory_threshold, low_utilization
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
                results.append(self._recovered("memory", sample, sample.memory_used))
            change = idle.observe(sample.utilization < self.low_utilization)
            if change == "alert":
                results.append(self.manager.notify_gpu_utilization_low(
                    sample.utilization, self.low_utilization, gpu=sample.device,
                    model_name=self.model_name, run_id=self.run_id))
            elif change == "recovered" and self.recovery_message:
                results.append(self._recovered("utilization", sample, sample.utilization))
        return results

    def _recovered(self, kind: str, sample: GpuSample, value: float) -> NotifyResult:
        return self.manager.send_event(builders.gpu_recovered(kind, value, gpu=sample.device,
                                                              model_name=self.model_name, run_id=self.run_id))

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
