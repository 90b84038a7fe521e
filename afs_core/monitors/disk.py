"""DiskMonitor: a warning when the checkpoint disk is fuller than a threshold, once until it recovers."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from afs_core.config import env_float, load_env
from afs_core.errors import ConfigurationError
from afs_core.monitors._default import default_manager

if TYPE_CHECKING:
    from afs_core.manager import NotificationManager
    from afs_core.results import NotifyResult

logger = logging.getLogger("afs.monitors")


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
        self.manager = default_manager(manager)
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
