"""The manager a monitor uses when it is given none: one per process, from the settings."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from afs_core.manager import NotificationManager

_default: NotificationManager | None = None
_default_lock = threading.Lock()


def default_manager(manager: NotificationManager | None) -> NotificationManager:
    """``manager``, or one process-wide manager from the settings (made once, not per call)."""
    global _default
    if manager is not None:
        return manager
    with _default_lock:
        if _default is None:
            from afs_core.manager import NotificationManager

            _default = NotificationManager.from_env()
        return _default
