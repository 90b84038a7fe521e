"""report_exception: OUT_OF_MEMORY for an out-of-memory error (recognised without torch),
TRAINING_FAILED for anything else."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from afs_core.monitors._default import default_manager

if TYPE_CHECKING:
    from afs_core.manager import NotificationManager
    from afs_core.results import NotifyResult

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
    manager = default_manager(manager)
    if is_out_of_memory(error):
        figures = _OOM_FIGURES.search(str(error))
        return manager.notify_out_of_memory(model_name, run_id, error, memory=figures.group(0) if figures else None)
    return manager.notify_training_failed(model_name, run_id, error)
