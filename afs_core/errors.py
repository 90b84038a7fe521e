"""Typed errors, so callers and the delivery engine can tell what to do next.

Configuration errors surface at set-up time with a clear message; delivery errors
say whether trying again could help (transient) or never will (permanent).
"""

from __future__ import annotations


class AfsError(Exception):
    """Base class of every error this framework raises on purpose."""


class ConfigurationError(AfsError, ValueError):
    """A setting is missing or malformed; raised when a channel is configured."""


class PluginLoadError(AfsError):
    """A plugin failed to load while strict plugin loading is on."""


class DeliveryError(AfsError):
    """A channel could not deliver a message.

    The text must be safe to log and store: channels never put secrets in it, and
    the core scrubs a channel's declared secrets from it as well.
    """

    permanent: bool = False

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class TransientDeliveryError(DeliveryError):
    """Trying again later may succeed (timeouts, 429, 5xx); may carry a retry-after."""

    permanent = False


class NotSent(TransientDeliveryError):
    """In a ``deliver_batch``: the channel did not get to this message (the batch's time
    ran out before its turn). Nothing was sent; the engine sends it again at once and
    counts no attempt."""


class PermanentDeliveryError(DeliveryError):
    """Trying again will not help (bad token, archived channel, rejected payload)."""

    permanent = True


class NothingToSend(AfsError):
    """The channel looked at the event and has nothing to say about it (a resolve for
    an incident that was never opened): recorded as filtered, with this reason, and
    never retried."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
