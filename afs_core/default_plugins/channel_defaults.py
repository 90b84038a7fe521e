"""Default format and deliver: each channel renders and sends its own messages.

Both run last (``trylast``), so any plugin can take over rendering or sending for
the channels and events it cares about.
"""

from __future__ import annotations

from typing import Any

from afs_core.channels.base import Channel
from afs_core.events import NotificationEvent
from afs_core.hookspecs import hookimpl


@hookimpl(trylast=True)
def afs_format_event(event: NotificationEvent, channel: Channel) -> Any:
    return channel.format(event)


@hookimpl(trylast=True)
def afs_deliver(message: Any, channel: Channel, event: NotificationEvent) -> Any:
    receipt = channel.deliver(message)
    return True if receipt is None else receipt
