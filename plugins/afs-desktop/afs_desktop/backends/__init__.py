"""One module per way of showing a notification; each builds its exact call."""

from __future__ import annotations

from typing import Protocol

from afs_desktop.message import DesktopMessage


class Backend(Protocol):
    name: str

    def unavailable_reason(self) -> str | None:
        """``None`` when this backend can show notifications here, else why not (fast)."""

    def show(self, message: DesktopMessage) -> None:
        """Show ``message``; raise a DeliveryError when it cannot."""
