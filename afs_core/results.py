"""What happened to one event on each channel, for callers who want to know."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping

import attrs

from afs_core.events import NotificationEvent


class DeliveryStatus(enum.Enum):
    DELIVERED = "delivered"
    FAILED = "failed"
    FILTERED = "filtered"


@attrs.frozen
class ChannelOutcome:
    """The result of sending one event to one channel. ``error`` is already scrubbed."""

    channel: str
    status: DeliveryStatus
    error: str | None = None
    permanent: bool = False
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status is DeliveryStatus.DELIVERED


class NotifyResult(Mapping[str, bool]):
    """Per-channel outcome of one ``notify*()`` call: ``result["slack"]`` is True when delivered.

    ``bool(result)`` is True when at least one channel delivered (as the
    ``notify()`` of earlier releases returned); ``result.ok`` when none failed.
    """

    def __init__(
        self,
        event: NotificationEvent | None,
        outcomes: Mapping[str, ChannelOutcome] | None = None,
        rejected: str | None = None,
    ) -> None:
        self.event = event
        self.outcomes: Mapping[str, ChannelOutcome] = dict(outcomes or {})
        self.rejected = rejected

    def __getitem__(self, name: str) -> bool:
        return self.outcomes[name].delivered

    def __iter__(self) -> Iterator[str]:
        return iter(self.outcomes)

    def __len__(self) -> int:
        return len(self.outcomes)

    def __bool__(self) -> bool:
        return bool(self.delivered)

    @property
    def ok(self) -> bool:
        """Accepted, and no channel failed."""
        return self.rejected is None and not self.failed

    @property
    def delivered(self) -> list[str]:
        return [name for name, o in self.outcomes.items() if o.delivered]

    @property
    def failed(self) -> dict[str, str]:
        """Channel name to the reason it failed."""
        return {
            name: o.error or "failed"
            for name, o in self.outcomes.items()
            if o.status is DeliveryStatus.FAILED
        }

    @property
    def filtered(self) -> list[str]:
        return [n for n, o in self.outcomes.items() if o.status is DeliveryStatus.FILTERED]

    def __repr__(self) -> str:
        if self.rejected is not None:
            return f"<NotifyResult rejected: {self.rejected}>"
        return f"<NotifyResult delivered={self.delivered} failed={self.failed} filtered={self.filtered}>"
