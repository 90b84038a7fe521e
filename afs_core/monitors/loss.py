"""check_loss: NAN_DETECTED once per run when the loss stops being a finite number."""

from __future__ import annotations

import math
import threading
import weakref
from typing import TYPE_CHECKING, Any

from afs_core.monitors._default import default_manager

if TYPE_CHECKING:
    from afs_core.manager import NotificationManager

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
    """True when ``loss`` is a finite number, which is recorded for the run's curve
    (``log_metrics``); on NaN or infinity, NAN_DETECTED once per run."""
    try:
        value = float(loss)
    except (TypeError, ValueError):
        return True  # not a number we can judge
    manager = default_manager(manager)
    if math.isfinite(value):
        manager.log_metrics(step=step, run_id=run_id, model_name=model_name, **{metric: value})
        return True
    with _nan_lock:
        reported = _nan_reported.setdefault(manager, set())
        if run_id in reported:
            return False
        reported.add(run_id)
    manager.notify_nan_detected(model_name, run_id or "run", metric=metric, step=step)
    return False
