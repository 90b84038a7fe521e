"""Running one event through the hooks to one channel, without ever raising.

This is the single place where filter, format and deliver hooks meet a channel,
so the engine, sending now (:mod:`afs_core.delivery.direct`) and ``afs test``
behave alike.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from afs_core.errors import DeliveryError, NothingToSend, NotSent, PermanentDeliveryError, TransientDeliveryError
from afs_core.events import NotificationEvent
from afs_core.formatting import strip_control
from afs_core.redaction import scrub
from afs_core.results import ChannelOutcome, DeliveryStatus

if TYPE_CHECKING:
    from afs_core.channels.base import Channel
    from afs_core.plugins import PluginHost

logger = logging.getLogger("afs.dispatch")


def enrich_event(plugins: PluginHost, event: NotificationEvent) -> NotificationEvent:
    """``event`` with the context every ``afs_enrich_event`` hook adds; never raises."""
    if not isinstance(event, NotificationEvent):
        return event  # deliver_event reports it
    hook = plugins.hook.afs_enrich_event
    if not hook.get_hookimpls() and not plugins.tracing:  # none (the usual case): no call through pluggy
        return event
    try:
        additions = hook(event=event)
    except (Exception, SystemExit):
        logger.exception("afs_enrich_event hook failed; event sent without enrichment")
        return event
    extra: dict[str, object] = {}
    for addition in additions:
        if isinstance(addition, dict) or hasattr(addition, "items"):
            extra.update(addition)
    if not extra:
        return event
    merged = {**extra, **event.context}  # the caller's own context wins
    try:
        return event.evolve(context=merged)
    except (TypeError, ValueError):
        logger.exception("afs_enrich_event returned unusable context; ignored")
        return event


def _as_delivery_error(exc: BaseException) -> DeliveryError:
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, SystemExit):
        return PermanentDeliveryError(f"channel called sys.exit({exc.code!r})")
    # A network error a channel forgot to classify may pass; anything else is a bug
    # that retrying will not fix.
    reason = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError):
        return TransientDeliveryError(reason)
    return PermanentDeliveryError(reason)


def _secrets_of(channel: Channel) -> list[str]:
    try:
        return [s for s in channel.secrets() if isinstance(s, str)]
    except Exception:
        return []


class Filtered(Exception):
    """An ``afs_filter_event`` hook held the event back from this channel."""


def render_message(plugins: PluginHost, channel: Channel, event: NotificationEvent) -> Any:
    """The message for ``channel`` after filter and format hooks; raises :class:`Filtered`."""
    hook = plugins.hook
    if any(verdict is False for verdict in hook.afs_filter_event(event=event, channel=channel)):
        raise Filtered()
    message = hook.afs_format_event(event=event, channel=channel)
    if message is None:
        raise PermanentDeliveryError("no afs_format_event implementation produced a message")
    return message


def deliver_event(
    plugins: PluginHost, name: str, channel: Channel, event: NotificationEvent, *, report: bool = True
) -> ChannelOutcome:
    """Filter, format and deliver ``event`` to ``channel``; report what happened.

    ``report=False`` leaves calling ``afs_delivery_failed`` to the caller (the engine
    calls it once, when it gives up, not for every failed attempt).
    """
    return deliver_events(plugins, name, channel, [event], report=report)[0]


def deliver_events(
    plugins: PluginHost, name: str, channel: Channel, events: Sequence[NotificationEvent], *, report: bool = True
) -> list[ChannelOutcome]:
    """:func:`deliver_event` for several events, one outcome each, in order.

    A channel with ``batch_size`` above one gets the rendered messages in one
    ``deliver_batch`` call (one connection and login for email, ten embeds to a
    request for Discord) unless a plugin implements ``afs_deliver``: then every
    message goes through that hook, one at a time, as it would alone. A message the
    batch did not get to (:class:`~afs_core.errors.NotSent`) comes back PENDING: not
    sent, not failed.
    """
    outcomes: list[ChannelOutcome | None] = [None] * len(events)
    ready: list[tuple[int, Any, NotificationEvent]] = []
    for index, event in enumerate(events):
        if not isinstance(event, NotificationEvent):
            logger.error("afs: %r was given %s, not a NotificationEvent; nothing sent", name, type(event).__name__)
            outcomes[index] = ChannelOutcome(
                name, DeliveryStatus.FAILED, error=f"not a NotificationEvent: {type(event).__name__}", permanent=True
            )
            continue
        try:
            ready.append((index, render_message(plugins, channel, event), event))
        except Filtered:
            outcomes[index] = ChannelOutcome(name, DeliveryStatus.FILTERED)
        except NothingToSend as exc:
            outcomes[index] = _nothing(name, exc)
        except (Exception, SystemExit) as exc:
            outcomes[index] = _failed(plugins, name, channel, [event], exc, report)
    if len(ready) > 1 and channel.batch_size > 1 and not _delivery_hooked(plugins):
        results = _batch(channel, [message for _, message, _ in ready])
        for (index, _, event), result in zip(ready, results, strict=True):
            if isinstance(result, NothingToSend):
                outcomes[index] = _nothing(name, result)
            elif isinstance(result, NotSent):  # its turn did not come: no attempt, nothing to report
                outcomes[index] = ChannelOutcome(name, DeliveryStatus.PENDING, error=strip_control(
                    scrub(str(result.reason), _secrets_of(channel)), keep=""))
            elif isinstance(result, BaseException):
                outcomes[index] = _failed(plugins, name, channel, [event], result, report)
            else:
                outcomes[index] = ChannelOutcome(name, DeliveryStatus.DELIVERED, receipt=result)
    else:
        for index, message, event in ready:
            outcomes[index] = deliver_message(plugins, name, channel, message, [event], report=report)
    return [outcome for outcome in outcomes if outcome is not None]


def _batch(channel: Channel, messages: list[Any]) -> list[Any]:
    """``channel.deliver_batch``: one result per message, or the call's own failure for each."""
    try:
        results = list(channel.deliver_batch(messages))
    except (Exception, SystemExit) as exc:
        return [exc] * len(messages)
    if len(results) != len(messages):
        broken = PermanentDeliveryError(f"deliver_batch returned {len(results)} results for {len(messages)} messages")
        return [broken] * len(messages)
    return results


def batch_size_for(plugins: PluginHost, channel: Channel) -> int:
    """How many messages one :func:`deliver_events` call hands ``channel`` at once: its
    ``batch_size``, or one each where a plugin's ``afs_deliver`` takes them (then the
    channel's ``batch_timeouts`` does not bound the call: each message has its timeout)."""
    size = max(1, int(getattr(channel, "batch_size", 1) or 1))
    return size if size > 1 and not _delivery_hooked(plugins) else 1


def _delivery_hooked(plugins: PluginHost) -> bool:
    """Whether a plugin (not the core's own default) implements ``afs_deliver``."""
    from afs_core.plugins import BUILTIN_PLUGINS

    return any(impl.plugin_name not in BUILTIN_PLUGINS for impl in plugins.hook.afs_deliver.get_hookimpls())


def deliver_message(
    plugins: PluginHost, name: str, channel: Channel, message: Any, events: Sequence[NotificationEvent],
    *, report: bool = True,
) -> ChannelOutcome:
    """Deliver one rendered message carrying ``events`` through the ``afs_deliver`` hook."""
    try:
        receipt = plugins.hook.afs_deliver(message=message, channel=channel, event=events[0])
    except NothingToSend as exc:
        return _nothing(name, exc)
    except (Exception, SystemExit) as exc:  # never into the caller's training loop
        return _failed(plugins, name, channel, events, exc, report)
    return ChannelOutcome(name, DeliveryStatus.DELIVERED, receipt=receipt)


def _nothing(name: str, said: NothingToSend) -> ChannelOutcome:
    """The channel had nothing to send for the event: filtered, with its reason."""
    return ChannelOutcome(name, DeliveryStatus.FILTERED, error=strip_control(str(said.reason), keep=""))


def _failed(
    plugins: PluginHost, name: str, channel: Channel, events: Sequence[NotificationEvent], exc: BaseException,
    report: bool = True,
) -> ChannelOutcome:
    raw = _as_delivery_error(exc)
    # Service text can carry escape sequences and secrets; logs and history get neither.
    reason = strip_control(scrub(str(raw.reason), _secrets_of(channel)), keep="")
    kind = PermanentDeliveryError if raw.permanent else TransientDeliveryError
    error = kind(reason, retry_after=raw.retry_after)
    if report:  # otherwise the engine logs it, once for a failure that repeats
        for event in events:
            logger.warning("afs: delivery of %s to %r failed: %s", event.event_type.value, name, reason)
            report_failure(plugins, event, channel, error)
    return ChannelOutcome(
        name, DeliveryStatus.FAILED, error=reason, permanent=error.permanent, retry_after=error.retry_after
    )


def report_failure(
    plugins: PluginHost, event: NotificationEvent, channel: Channel, error: DeliveryError
) -> None:
    try:
        plugins.hook.afs_delivery_failed(event=event, channel=channel, error=error)
    except (Exception, SystemExit):
        logger.exception("afs_delivery_failed hook raised; ignored")
