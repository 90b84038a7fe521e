"""``DesktopNotifier``: native desktop notifications on macOS, Linux and Windows.

The message is composed once (:mod:`afs_desktop.message`); a backend per platform
shows it (:mod:`afs_desktop.backends`). Where none can, a send fails within a
second with the reason, and ``from_env`` does not register the channel at all.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from afs_core import Channel, EventType, NotificationEvent, NotificationLevel, SendsDirectly
from afs_core.channels import Setting, boolean, read_settings
from afs_core.formatting import one_line, strip_control, truncate

if TYPE_CHECKING:  # composing and showing load with the first event: a training process only builds the channel
    from afs_desktop.backends import Backend
    from afs_desktop.message import DesktopMessage

logger = logging.getLogger("afs.desktop")


def choose_backend(platform: str | None = None) -> Backend:
    """The backend for this platform; on Linux D-Bus first, then ``notify-send``."""
    from afs_desktop.backends.commands import macos_backend, notify_send_backend, windows_backend
    from afs_desktop.backends.freedesktop import FreedesktopBackend

    platform = platform or sys.platform
    if platform == "darwin":
        return macos_backend()
    if platform.startswith("win"):
        return windows_backend()
    dbus = FreedesktopBackend()
    # notify-send talks to the same bus: it only helps where we cannot (jeepney missing).
    # Where there is no bus or no notification server it would fail too, only slower.
    try:
        import jeepney  # noqa: F401
    except ImportError:
        fallback = notify_send_backend()
        if fallback.unavailable_reason() is None:
            return fallback
    return dbus


class DesktopNotifier(SendsDirectly, Channel):
    """Desktop channel. Settings: ``DESKTOP_NOTIFICATIONS_ENABLED``, ``DESKTOP_NOTIFICATIONS_SOUND``."""

    name = "desktop"
    settings = (
        Setting("DESKTOP_NOTIFICATIONS_ENABLED", "enabled", parse=boolean, required=True),
        Setting("DESKTOP_NOTIFICATIONS_SOUND", "enable_sound", parse=boolean),
    )

    def __init__(self, enable_sound: bool = True, app_name: str = "AFS", backend: Backend | None = None) -> None:
        self.enable_sound = enable_sound
        self.app_name = one_line(app_name, 64) or "AFS"
        self._backend = backend

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = choose_backend()
        return self._backend

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DesktopNotifier | None:
        values = read_settings(cls.settings, env)
        if not values or not values.pop("enabled"):
            return None
        notifier = cls(**values)
        reason = notifier.backend.unavailable_reason()
        if reason is not None:
            logger.warning("afs: desktop notifications are enabled but unavailable here: %s", reason)
            return None
        return notifier

    def format(self, event: NotificationEvent) -> DesktopMessage:
        from afs_desktop.message import compose

        return compose(event, app_name=self.app_name, sound=self.enable_sound)

    def deliver(self, message: Any) -> Any:
        from afs_desktop.message import BODY_LIMIT, TITLE_LIMIT, DesktopMessage

        if not isinstance(message, DesktopMessage):  # a plugin's formatter returned text
            lines = str(message).strip().splitlines() or ["AFS"]
            message = DesktopMessage(
                one_line(lines[0], TITLE_LIMIT),
                truncate(strip_control("\n".join(lines[1:3])), BODY_LIMIT),
                NotificationLevel.INFO, self.app_name, self.enable_sound,
            )
        return self.backend.show(message)

    def notify_simple(
        self, title: str, message: str, level: NotificationLevel | str = NotificationLevel.INFO
    ) -> bool:
        """Show one notification without building an event by hand; never raises."""
        try:
            event = NotificationEvent(EventType.ERROR_OCCURRED, str(title), str(message), level=level)
        except (TypeError, ValueError) as exc:
            logger.error("afs: desktop notification rejected: %s", exc)
            return False
        return self.send(event)

    def is_configured(self) -> bool:
        return self.backend.unavailable_reason() is None

    def describe(self) -> str:
        backend = self._backend.name if self._backend is not None else "auto"
        return f"desktop {backend} ({self.app_name}, sound {'on' if self.enable_sound else 'off'})"

