"""What a channel is made of: the :class:`Channel` contract, the settings it declares,
and :class:`WebhookChannel`, which does everything a channel posting JSON needs
except its payload. Names load on first use, so the core's own path to the first
``notify()`` does not pay for the webhook machinery."""

from __future__ import annotations

import importlib

TYPE_CHECKING = False

__all__ = [
    "HOLDS", "Channel", "RateLimit", "Setting", "WebhookChannel", "boolean", "read_settings", "seconds", "text_list",
    "whole_number",
]

_WHERE = {
    "Channel": "afs_core.channels.base",
    "RateLimit": "afs_core.channels.base",
    "Setting": "afs_core.channels.settings",
    "boolean": "afs_core.channels.settings",
    "read_settings": "afs_core.channels.settings",
    "seconds": "afs_core.channels.settings",
    "text_list": "afs_core.channels.settings",
    "whole_number": "afs_core.channels.settings",
    "HOLDS": "afs_core.channels.webhook",
    "WebhookChannel": "afs_core.channels.webhook",
}

if TYPE_CHECKING:
    from afs_core.channels.base import Channel, RateLimit
    from afs_core.channels.settings import Setting, boolean, read_settings, seconds, text_list, whole_number
    from afs_core.channels.webhook import HOLDS, WebhookChannel


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'afs_core.channels' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
