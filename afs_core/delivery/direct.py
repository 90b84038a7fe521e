"""Sending now, on the caller's thread: one event or a batch, through the plugin hooks.

The engine delivers in the background; this is for what must go out before the
next line runs (``afs test``, ``AFS_SYNC=true``) and for the seed-era
``notifier.send(event) -> bool``, which the shipped notifiers keep through
:class:`SendsDirectly`. Nothing here raises: a failure is an outcome.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from afs_core.delivery.dispatch import deliver_event, deliver_events, enrich_event
from afs_core.events import NotificationEvent
from afs_core.results import ChannelOutcome, DeliveryStatus

if TYPE_CHECKING:
    from afs_core.channels.base import Channel
    from afs_core.plugins import PluginHost


def _host(plugins: PluginHost | None) -> PluginHost:
    from afs_core.plugins import get_plugins

    return plugins if plugins is not None else get_plugins()


def send_now(channel: Channel, event: NotificationEvent, *, plugins: PluginHost | None = None,
             name: str | None = None) -> ChannelOutcome:
    """Enrich, filter, format and deliver ``event`` to ``channel`` now; the outcome
    carries the channel's receipt. ``plugins`` defaults to the process-wide host."""
    host = _host(plugins)
    return deliver_event(host, name or channel.name or type(channel).__name__, channel, enrich_event(host, event))


def send_many_now(channel: Channel, events: Iterable[NotificationEvent], *,
                  plugins: PluginHost | None = None, name: str | None = None) -> list[ChannelOutcome]:
    """Several events now, one outcome each, through the batch path the engine uses
    (one connection and login for email, packed embeds for Discord)."""
    host = _host(plugins)
    enriched = [enrich_event(host, event) for event in events]
    label = name or channel.name or type(channel).__name__
    outcomes = deliver_events(host, label, channel, enriched)
    # What a batch did not get to (its time ran out) goes again, until a try sends none.
    for _ in range(len(outcomes)):
        waiting = [i for i, outcome in enumerate(outcomes) if outcome.status is DeliveryStatus.PENDING]
        if not waiting:
            break
        again = deliver_events(host, label, channel, [enriched[i] for i in waiting])
        for index, outcome in zip(waiting, again, strict=True):
            outcomes[index] = outcome
        if all(outcome.status is DeliveryStatus.PENDING for outcome in again):
            break
    return outcomes


class SendsDirectly:
    """``send(event) -> bool`` and friends, as the seed-era notifiers had them."""

    def send(self, event: NotificationEvent) -> bool:
        """Format and deliver ``event`` now; False (logged) when it failed. Never raises."""
        return send_now(self, event).delivered  # type: ignore[arg-type]

    def send_with_outcome(self, event: NotificationEvent) -> ChannelOutcome:
        """Like :meth:`send`, with the whole outcome (error, receipt)."""
        return send_now(self, event)  # type: ignore[arg-type]

    def send_batch(self, events: Iterable[NotificationEvent]) -> int:
        """Send several events now; returns how many were delivered."""
        return sum(o.delivered for o in send_many_now(self, events))  # type: ignore[arg-type]
