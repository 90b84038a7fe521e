"""The contract every channel implements, ours and third parties' alike.

A channel only knows how to render an event for its service (``format``) and how
to send one rendered message (``deliver``). Everything around that — hooks,
filtering, error handling, never raising, retrying — is done once, in the core's
delivery layer; a channel never reaches up to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, TypeVar

import attrs

from afs_core.events import NotificationEvent

_C = TypeVar("_C", bound="Channel")


@attrs.frozen
class RateLimit:
    """How fast a channel may send: ``per_second`` sustained, ``burst`` at once."""

    per_second: float
    burst: int = 1


class Channel:
    """Base class of every channel (console, desktop, email, Slack, Discord, yours).

    Subclasses override :meth:`deliver`, usually :meth:`format` and
    :meth:`from_env`, and :meth:`secrets` when they hold credentials.
    """

    #: The channel's registered name ("slack"); set by the registry when empty.
    name: ClassVar[str] = ""
    #: How fast the engine may send through this channel (None: no limit of ours).
    rate_limit: ClassVar[RateLimit | None] = None
    #: Seconds in which repeats of a repetitive event are held back (0: never).
    throttle_seconds: ClassVar[float] = 600.0
    #: Settings ``from_env`` needs, named by ``afs status`` when the channel is off.
    required_settings: ClassVar[tuple[str, ...]] = ()

    def format(self, event: NotificationEvent) -> Any:
        """Render ``event`` as this channel's message. Default: plain text."""
        from afs_core.formatting import render_text

        return render_text(event)

    def deliver(self, message: Any) -> Any:
        """Send one rendered message; raise a :class:`~afs_core.errors.DeliveryError` on failure.

        May block for up to the channel's timeout. Returns an optional receipt.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement deliver()")

    @classmethod
    def from_env(cls: type[_C], env: Mapping[str, str]) -> _C | None:
        """A configured instance from settings, or ``None`` when its settings are absent.

        Raises :class:`~afs_core.errors.ConfigurationError` when settings are
        present but wrong, so the mistake shows at start-up, not at the first send.
        """
        return None

    def is_configured(self) -> bool:
        """Whether this instance has what it needs to deliver."""
        return True

    def describe(self) -> str:
        """A one-line description for status output, with every secret redacted."""
        return self.name or type(self).__name__

    def close(self) -> None:
        """Release connections or other resources; the channel may be used again after."""

    def secrets(self) -> Iterable[str]:
        """Strings that must never appear in logs, errors or history (tokens, passwords)."""
        return ()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"
