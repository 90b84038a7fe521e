"""CostMonitor: each cost threshold once per run, remembered across a resume."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from afs_core.config import env_float, load_env
from afs_core.errors import ConfigurationError
from afs_core.monitors._default import default_manager
from afs_core.source import detect_world_size

if TYPE_CHECKING:
    from afs_core.manager import NotificationManager
    from afs_core.results import NotifyResult

logger = logging.getLogger("afs.monitors")

SAVE_SECONDS = 30.0  # how often a cost monitor writes its elapsed time to the store

Clock = Callable[[], float]


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
        self.manager = default_manager(manager)
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
