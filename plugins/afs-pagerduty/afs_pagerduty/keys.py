"""Dedup keys: one PagerDuty incident per run and kind of trouble, whatever repeats it.

PagerDuty folds every trigger with the same ``dedup_key`` into one open incident,
so a failure reported by 64 ranks, or again after each retry, pages once. A key is
``afs/<run_id>/<kind>`` (``afs-host/<host>/<kind>`` for an event without a run id),
at most :data:`MAX_KEY_BYTES` long: a run id too long for that, or holding control
characters, is cut and given a hash of the whole id, so the key stays the same for
the same run in every process.
"""

from __future__ import annotations

import hashlib

from afs_core.events import EventType, NotificationEvent
from afs_core.formatting import strip_control

#: PagerDuty's limit is 255 characters; counted in UTF-8 bytes here, so no way of
#: counting on their side can find a key too long.
MAX_KEY_BYTES = 255

#: The events that end incidents rather than open them.
RECOVERY_TYPES = frozenset({EventType.TRAINING_COMPLETED, EventType.TRAINING_RESUMED})
#: The GPU monitor reports a cleared alert with the alert's own type, ``context["recovered"]``
#: and SUCCESS (``afs_core.builders.gpu_recovered``).
GPU_TYPES = frozenset({EventType.GPU_MEMORY_WARNING, EventType.GPU_UTILIZATION_LOW})
#: A run that makes progress again after a stall ends the stall's incident, nothing else.
STALL_RECOVERY_TYPES = frozenset({EventType.TRAINING_PROGRESS_RESUMED})

_NAMED_KINDS = {
    EventType.TRAINING_FAILED: "failed",
    EventType.EVALUATION_FAILED: "evaluation-failed",
    EventType.ERROR_OCCURRED: "error",
    EventType.OUT_OF_MEMORY: "failed",  # the core reports a run that died of OOM as this, not TRAINING_FAILED
    EventType.NAN_DETECTED: "nan",
    EventType.GPU_MEMORY_WARNING: "gpu-memory",
    EventType.GPU_UTILIZATION_LOW: "gpu-utilization",
    EventType.COST_THRESHOLD_EXCEEDED: "cost",
    EventType.DISK_SPACE_WARNING: "disk",
    EventType.TRAINING_PAUSED: "paused",
    EventType.TRAINING_STALLED: "stalled",
}


def kind_of(event_type: EventType) -> str:
    """The kind of trouble an event type opens an incident for (``failed``, ``gpu-memory``)."""
    return _NAMED_KINDS.get(event_type) or event_type.value.replace("_", "-")


#: Every kind a trigger can have: a completed or resumed run resolves all of them.
TRIGGER_KINDS = tuple(dict.fromkeys(kind_of(t) for t in EventType if t not in RECOVERY_TYPES))
_LONGEST_KIND = max(len(kind.encode()) for kind in TRIGGER_KINDS)
_HASH_CHARS = 16


def scope_of(event: NotificationEvent) -> str:
    """What an incident belongs to: the run, or the host for an event without a run id
    (a GPU monitor started without one alerts and recovers on the same host)."""
    if event.run_id:
        return f"afs/{_fitted(event.run_id)}"
    return f"afs-host/{_fitted(event.source.host or 'unknown-host')}"


def dedup_key(event: NotificationEvent, kind: str | None = None) -> str:
    """The key of the incident ``event`` opens (or, given ``kind``, of that kind of its run)."""
    return f"{scope_of(event)}/{kind or kind_of(event.event_type)}"


def recovery_kinds(event: NotificationEvent) -> tuple[str, ...] | None:
    """The kinds of incident ``event`` resolves, or None when it resolves nothing.

    A completed or resumed run ends all of its incidents (a NaN or a crash is gone
    once the run goes on from a checkpoint); a GPU recovery ends only that GPU alert, and
    progress after a stall only the stall.
    """
    if event.event_type in RECOVERY_TYPES:
        return TRIGGER_KINDS
    if event.event_type in GPU_TYPES and event.context.get("recovered") is True:
        return (kind_of(event.event_type),)
    if event.event_type in STALL_RECOVERY_TYPES:
        return (kind_of(EventType.TRAINING_STALLED),)
    return None


def _fitted(text: str) -> str:
    """``text`` as it can stand in a key: unchanged when clean and short enough, else
    its clean start and a hash of all of it (the same in every process)."""
    room = MAX_KEY_BYTES - len("afs-host/") - 1 - _LONGEST_KIND
    clean = strip_control(text, keep="").strip()
    if clean == text and len(text.encode("utf-8", "surrogatepass")) <= room:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    head = clean.encode("utf-8")[: room - _HASH_CHARS - 1].decode("utf-8", "ignore")
    return f"{head}~{digest}"
