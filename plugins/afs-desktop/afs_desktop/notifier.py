"""``DesktopNotifier``: native desktop notifications where the user sits.

This release registers the channel and reads its settings; the macOS, Linux
(D-Bus) and Windows backends come next, so ``deliver`` fails with a permanent,
clearly worded error until then.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from afs_core import Channel, EventType, NotificationEvent, NotificationLevel, PermanentDeliveryError
from afs_core.config import env_bool


class DesktopNotifier(Channel):
    """Desktop channel. Settings: ``DESKTOP_NOTIFICATIONS_ENABLED``, ``DESKTOP_NOTIFICATIONS_SOUND``."""

    name = "desktop"

    def __init__(self, enable_sound: bool = True, app_name: str = "AFS") -> None:
        self.enable_sound = enable_sound
        self.app_name = app_name

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DesktopNotifier | None:
        if not env_bool(env, "DESKTOP_NOTIFICATIONS_ENABLED", False):
            return None
        return cls(enable_sound=env_bool(env, "DESKTOP_NOTIFICATIONS_SOUND", True))

    def notify_simple(
        self, title: str, message: str, level: NotificationLevel | str = NotificationLevel.INFO
    ) -> bool:
        """Show one notification without building an event by hand."""
        try:
            event = NotificationEvent(EventType.ERROR_OCCURRED, title, message, level=level)
        except (TypeError, ValueError):
            return False
        return self.send(event)

    def deliver(self, message: Any) -> None:
        raise PermanentDeliveryError("afs-desktop 0.1.0 has no desktop backend yet")

    def describe(self) -> str:
        return f"desktop ({self.app_name}, sound {'on' if self.enable_sound else 'off'})"
