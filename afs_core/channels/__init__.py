"""What a channel is made of: the :class:`Channel` contract, the settings it declares,
:class:`WebhookChannel`, which does everything a channel posting JSON needs
except its payload, and a channel's memory of what it sent. Names load on first use, so the core's own path to the first
``notify()`` does not pay for the webhook machinery."""

from __future__ import annotations

from afs_core.lazy import lazy_names

TYPE_CHECKING = False

__all__ = [
    "HOLDS", "Channel", "ChannelMemory", "LocalMemory", "RateLimit", "Setting", "WebhookChannel", "boolean",
    "deliver_to_each", "json_object", "read_settings", "seconds", "text_list", "whole_number",
]

_WHERE = {
    "Channel": "afs_core.channels.base",
    "RateLimit": "afs_core.channels.base",
    "ChannelMemory": "afs_core.channels.memory",
    "LocalMemory": "afs_core.channels.memory",
    "deliver_to_each": "afs_core.channels.fanout",
    "Setting": "afs_core.channels.settings",
    "boolean": "afs_core.channels.settings",
    "read_settings": "afs_core.channels.settings",
    "seconds": "afs_core.channels.settings",
    "text_list": "afs_core.channels.settings",
    "whole_number": "afs_core.channels.settings",
    "HOLDS": "afs_core.channels.webhook",
    "WebhookChannel": "afs_core.channels.webhook",
    "json_object": "afs_core.channels.webhook",
}

if TYPE_CHECKING:
    from afs_core.channels.base import Channel, RateLimit
    from afs_core.channels.fanout import deliver_to_each
    from afs_core.channels.memory import ChannelMemory, LocalMemory
    from afs_core.channels.settings import Setting, boolean, read_settings, seconds, text_list, whole_number
    from afs_core.channels.webhook import HOLDS, WebhookChannel, json_object


__getattr__, __dir__ = lazy_names(__name__, _WHERE, __all__)
