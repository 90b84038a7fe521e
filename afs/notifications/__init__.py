"""The import path of earlier releases: ``from afs.notifications import NotificationManager``.

Core names come from ``afs_core``; each channel class comes from its own
distribution when that is installed, and a missing one says what to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

_CORE = {
    "NotificationManager": "afs_core.manager",
    "NotificationEvent": "afs_core.events",
    "EventType": "afs_core.events",
    "EventCategory": "afs_core.events",
    "NotificationLevel": "afs_core.events",
    "NotifyResult": "afs_core.results",
    "Channel": "afs_core.channels.base",
    "ConsoleChannel": "afs_core.default_plugins.console",
}
_ALIASES = {"NotificationHandler": ("afs_core.channels.base", "Channel")}
# Channel class -> (distribution, module that defines it).
_CHANNELS = {
    "DesktopNotifier": ("afs-desktop", "afs_desktop"),
    "EmailNotifier": ("afs-email", "afs_email"),
    "SlackNotifier": ("afs-slack", "afs_slack"),
    "DiscordNotifier": ("afs-discord", "afs_discord"),
}

# Star-import brings the installed channels only; naming a missing one explains itself.
__all__ = [*_CORE, *_ALIASES, *(n for n, (_, m) in _CHANNELS.items() if importlib.util.find_spec(m))]


def __getattr__(name: str) -> Any:
    if name in _CORE:
        return getattr(importlib.import_module(_CORE[name]), name)
    if name in _ALIASES:
        module, attr = _ALIASES[name]
        return getattr(importlib.import_module(module), attr)
    if name in _CHANNELS:
        distribution, module_name = _CHANNELS[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise  # the plugin is installed but one of its own imports is missing
            raise ImportError(
                f"{name} is provided by {distribution}: pip install {distribution}",
                name=module_name,
            ) from None
        return getattr(module, name)
    raise AttributeError(f"module 'afs.notifications' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, *_CHANNELS])
