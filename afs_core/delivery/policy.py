"""Keeping channels quiet: minimum level, event-type lists, and throttling with a digest.

A training loop can raise the same event every step; a channel that forwards them
all gets muted by its reader. Per channel, events below a level or outside the
allowed types are held back, and repetitive ones (same type, run and channel
within a window) are sent once, the next one carrying "and 37 more" for those held.
Errors and critical events are never throttled.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Collection, Mapping
from typing import Any, NamedTuple

from afs_core.config import env_float
from afs_core.errors import ConfigurationError
from afs_core.events import EventType, NotificationEvent, NotificationLevel
from afs_core.formatting import format_duration

# The monitors' GPU and disk alerts are not here: they already fire once, until recovery.
THROTTLED_BY_DEFAULT = frozenset({
    EventType.BATCH_PROCESSED, EventType.EPOCH_COMPLETED, EventType.LOSS_IMPROVED, EventType.LOSS_DEGRADED,
    EventType.CHECKPOINT_SAVED,
})


def _types(raw: str, setting: str) -> frozenset[EventType]:
    types = set()
    for name in (part.strip() for part in raw.split(",")):
        if not name:
            continue
        try:
            types.add(EventType(name))
        except ValueError:
            raise ConfigurationError(f"{setting}: unknown event type {name!r}") from None
    return frozenset(types)


def _level(text: str, setting: str) -> NotificationLevel:
    try:
        return NotificationLevel(text)
    except ValueError:
        raise ConfigurationError(f"{setting}: unknown level {text!r}") from None


class ChannelPolicy(NamedTuple):
    """What one channel lets through. ``events`` None means every type."""

    min_level: NotificationLevel = NotificationLevel.INFO
    events: frozenset[EventType] | None = None
    exclude: frozenset[EventType] = frozenset()
    throttle_window: float = 600.0
    throttled: frozenset[EventType] = THROTTLED_BY_DEFAULT
    #: Types let through below ``min_level`` (the channel needs them: a recovery
    #: that resolves its incident); the event lists still apply to them.
    below_level: frozenset[EventType] = frozenset()

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], channel: str, throttle_window: float = 600.0, *,
        default_level: NotificationLevel | None = None, below_level: frozenset[EventType] = frozenset(),
    ) -> ChannelPolicy:
        """``AFS_<CHANNEL>_MIN_LEVEL``, ``_EVENTS``, ``_EXCLUDE_EVENTS``, ``_THROTTLE_SECONDS``
        (``AFS_MIN_LEVEL`` and ``AFS_THROTTLE_SECONDS`` for all channels; 0 turns
        throttling off). ``throttle_window`` is the channel's own default;
        ``default_level`` its own least level, raised (never lowered) by ``AFS_MIN_LEVEL``."""
        prefix = f"AFS_{channel.upper().replace('-', '_')}_"
        own = env.get(prefix + "MIN_LEVEL", "").strip()
        min_level = _level(own or env.get("AFS_MIN_LEVEL", "").strip() or "info",
                           prefix + "MIN_LEVEL" if own else "AFS_MIN_LEVEL")
        if not own and default_level is not None:
            min_level = max(min_level, default_level)
        allowed = env.get(prefix + "EVENTS", "").strip()
        window = env_float(env, "AFS_THROTTLE_SECONDS", throttle_window)
        return cls(
            min_level=min_level,
            events=_types(allowed, prefix + "EVENTS") if allowed else None,
            exclude=_types(env.get(prefix + "EXCLUDE_EVENTS", ""), prefix + "EXCLUDE_EVENTS"),
            throttle_window=env_float(env, prefix + "THROTTLE_SECONDS", window),
            below_level=below_level,
        )

    def admits(self, event: NotificationEvent) -> bool:
        if event.level < self.min_level and event.event_type not in self.below_level:
            return False
        if self.events is not None and event.event_type not in self.events:
            return False
        return event.event_type not in self.exclude


_SHARED_ERRORS = (sqlite3.Error, OSError)  # a store that cannot answer now: this process decides alone


class Throttle:
    """Per channel: holds back repeats of the same (type, run) within the window.

    Given a store that shares the counts (``store``, ``channel``), the window and the
    number held back are those of every process on it: a run's repeats are held back
    whichever host's worker claims them, and one digest tells of them all.
    """

    def __init__(self, window: float, throttled: Collection[EventType]) -> None:
        self.window = window
        self.throttled = frozenset(throttled)
        self._lock = threading.Lock()
        self._last: dict[tuple[EventType, str | None], float] = {}
        self._held: dict[tuple[EventType, str | None], int] = {}

    def check(self, event: NotificationEvent, now: float | None = None, *, store: Any = None,
              channel: str = "") -> tuple[bool, str | None]:
        """(send?, digest): the digest says how many were held back since the last one."""
        if (self.window <= 0 or event.event_type not in self.throttled or event.level >= NotificationLevel.ERROR
                or "held_back" in event.context):  # a digest is never held back itself
            return True, None
        now = time.monotonic() if now is None else now
        key = (event.event_type, event.run_id)
        shared = self._shared(store, channel, event)
        if shared is not None:
            send, held = shared
            with self._lock:  # which keys this process saw held back, for its closing digests
                if send:
                    self._held.pop(key, None)
                else:
                    self._held[key] = self._held.get(key, 0) + 1
            return send, (self._digest(event.event_type, held) if send and held else None)
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.window:
                self._held[key] = self._held.get(key, 0) + 1
                return False, None
            self._last[key] = now
            held = self._held.pop(key, 0)
        if not held:
            return True, None
        return True, self._digest(event.event_type, held)

    def _digest(self, event_type: EventType, held: int) -> str:
        label = event_type.value.replace("_", " ")
        return f"and {held} more '{label}' in the last {format_duration(self.window)}"

    def _shared(self, store: Any, channel: str, event: NotificationEvent) -> tuple[bool, int] | None:
        shares = getattr(store, "throttle", None)
        if shares is None:
            return None
        try:
            found: tuple[bool, int] | None = shares(channel, event.event_type.value, event.run_id or "", self.window)
        except _SHARED_ERRORS:
            return None
        return found

    def pending_digests(self, store: Any = None, channel: str = "") -> list[tuple[EventType, str | None, int]]:
        """Held-back counts not yet reported by a later event (for a closing summary);
        with a store that shares them, the count every process held back, taken once."""
        with self._lock:
            held, self._held = self._held, {}
        take = getattr(store, "take_held", None)
        digests = []
        for (event_type, run_id), count in held.items():
            if take is not None:
                try:
                    shared: int | None = take(channel, event_type.value, run_id or "")
                except _SHARED_ERRORS:
                    shared = None
                count = count if shared is None else shared  # 0: a later event, anywhere, told of them
            if count:
                digests.append((event_type, run_id, count))
        return digests
