"""What happened to one event on each channel, for callers who want to know."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator, Mapping
from typing import Any

from afs_core.events import NotificationEvent


class DeliveryStatus(enum.Enum):
    PENDING = "pending"  # accepted; not delivered yet (or failed and will be retried)
    DELIVERED = "delivered"
    FAILED = "failed"  # for good: permanent, or retries exhausted
    FILTERED = "filtered"


@dataclasses.dataclass(frozen=True, slots=True)
class ChannelOutcome:
    """The result of sending one event to one channel. ``error`` is already scrubbed."""

    channel: str
    status: DeliveryStatus
    error: str | None = None
    permanent: bool = False
    retry_after: float | None = None
    #: What the channel's ``deliver`` returned (the service's answer), when delivered now.
    receipt: Any = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def delivered(self) -> bool:
        return self.status is DeliveryStatus.DELIVERED


class NotifyResult(Mapping[str, bool]):
    """Per-channel outcome of one ``notify*()`` call: ``result["slack"]`` is True when delivered.

    With background delivery the outcomes fill in as the engine works;
    ``result.wait(timeout)`` blocks until every channel is done. ``bool(result)`` is
    True when some channel delivered or the event is still on its way (accepted);
    ``result.ok`` when it was accepted and no channel failed for good.
    """

    def __init__(
        self,
        event: NotificationEvent | None,
        outcomes: Mapping[str, ChannelOutcome] | None = None,
        rejected: str | None = None,
        tracker: Any = None,
    ) -> None:
        self.event = event
        self._outcomes: Mapping[str, ChannelOutcome] = dict(outcomes or {})
        self.rejected = rejected
        self._tracker = tracker

    @property
    def outcomes(self) -> Mapping[str, ChannelOutcome]:
        if self._tracker is not None:
            return {**self._tracker.outcomes, **self._outcomes}
        return self._outcomes

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every channel delivered, failed for good or held the event back."""
        return True if self._tracker is None else bool(self._tracker.wait(timeout))

    @property
    def pending(self) -> list[str]:
        return [n for n, o in self.outcomes.items() if o.status is DeliveryStatus.PENDING]

    def __getitem__(self, name: str) -> bool:
        return self.outcomes[name].delivered

    def __iter__(self) -> Iterator[str]:
        return iter(self.outcomes)

    def __len__(self) -> int:
        return len(self.outcomes)

    def __bool__(self) -> bool:
        return bool(self.delivered) or bool(self.pending)

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
        pending = f" pending={self.pending}" if self.pending else ""
        return f"<NotifyResult delivered={self.delivered} failed={self.failed} filtered={self.filtered}{pending}>"
