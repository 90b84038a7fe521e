"""AFS notifications: tell people what their training runs are doing.

Names are imported on first use, so ``import afs_core`` stays cheap for scripts
that only need a part of it.
"""

from __future__ import annotations

from afs_core.lazy import lazy_names

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers know it)

__all__ = [
    "Channel",
    "ChannelOutcome",
    "ConfigurationError",
    "DeliveryError",
    "EventCategory",
    "EventType",
    "NotificationEvent",
    "NotificationLevel",
    "NotificationManager",
    "NothingToSend",
    "NotifyResult",
    "PermanentDeliveryError",
    "PluginHost",
    "RateLimit",
    "SendsDirectly",
    "Setting",
    "Source",
    "TransientDeliveryError",
    "WebhookChannel",
    "hookimpl",
    "notify_on_completion",
    "send_now",
]

_WHERE = {
    "Channel": "afs_core.channels.base",
    "ChannelOutcome": "afs_core.results",
    "NotifyResult": "afs_core.results",
    "ConfigurationError": "afs_core.errors",
    "DeliveryError": "afs_core.errors",
    "PermanentDeliveryError": "afs_core.errors",
    "NothingToSend": "afs_core.errors",
    "TransientDeliveryError": "afs_core.errors",
    "EventCategory": "afs_core.events",
    "EventType": "afs_core.events",
    "NotificationEvent": "afs_core.events",
    "NotificationLevel": "afs_core.events",
    "NotificationManager": "afs_core.manager",
    "PluginHost": "afs_core.plugins",
    "RateLimit": "afs_core.channels.base",
    "Setting": "afs_core.channels.settings",
    "WebhookChannel": "afs_core.channels.webhook",
    "SendsDirectly": "afs_core.delivery.direct",
    "send_now": "afs_core.delivery.direct",
    "Source": "afs_core.source",
    "hookimpl": "afs_core.hookspecs",
    "notify_on_completion": "afs_core.integrations.decorator",
}

if TYPE_CHECKING:
    from afs_core.channels.base import Channel, RateLimit
    from afs_core.channels.settings import Setting
    from afs_core.channels.webhook import WebhookChannel
    from afs_core.delivery.direct import SendsDirectly, send_now
    from afs_core.errors import (
        ConfigurationError,
        DeliveryError,
        NothingToSend,
        PermanentDeliveryError,
        TransientDeliveryError,
    )
    from afs_core.events import EventCategory, EventType, NotificationEvent, NotificationLevel
    from afs_core.hookspecs import hookimpl
    from afs_core.integrations.decorator import notify_on_completion
    from afs_core.manager import NotificationManager
    from afs_core.plugins import PluginHost
    from afs_core.results import ChannelOutcome, NotifyResult
    from afs_core.source import Source


__getattr__, __dir__ = lazy_names(__name__, _WHERE, __all__)
