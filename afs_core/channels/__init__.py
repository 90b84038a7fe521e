"""What a channel is made of: the :class:`Channel` contract, the settings it declares,
and :class:`WebhookChannel`, which does everything a channel posting JSON needs
except its payload."""

from afs_core.channels.base import Channel, RateLimit
from afs_core.channels.settings import Setting, boolean, read_settings, seconds, text_list, whole_number
from afs_core.channels.webhook import HOLDS, WebhookChannel

__all__ = [
    "HOLDS", "Channel", "RateLimit", "Setting", "WebhookChannel", "boolean", "read_settings", "seconds", "text_list",
    "whole_number",
]
