"""Handlers from before channels: anything with ``send(event) -> bool`` still registers.

The seed's handler API sent an event and said whether it went; such an object (or
a Channel subclass that only overrides ``send``) is adapted here into a channel the
engine can deliver through, retrying when it reports failure.
"""

from __future__ import annotations

from typing import Any

from afs_core.channels.base import Channel
from afs_core.errors import TransientDeliveryError
from afs_core.events import NotificationEvent


class _LegacyHandler(Channel):
    """Adapts a handler that only has ``send(event) -> bool`` (the earlier handler API)."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler

    def format(self, event: NotificationEvent) -> NotificationEvent:
        return event

    def deliver(self, message: Any) -> None:
        if not self.handler.send(message):
            raise TransientDeliveryError(f"{type(self.handler).__name__}.send() reported failure")

    def describe(self) -> str:
        return type(self.handler).__name__


def as_channel(handler: Any) -> Channel:
    """``handler`` as a channel: a Channel as it is, a seed-era handler adapted."""
    if isinstance(handler, Channel):
        if type(handler).deliver is Channel.deliver and callable(getattr(handler, "send", None)):
            return _LegacyHandler(handler)  # a subclass that only overrides send()
        return handler
    if callable(getattr(handler, "send", None)):
        return _LegacyHandler(handler)
    raise TypeError(f"handler must be an afs_core.Channel or have send(event), got {type(handler).__name__}")
