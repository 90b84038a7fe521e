"""What a channel remembers between sends, and between processes.

Some channels need to know what they sent before: PagerDuty which incidents of a
run are open (so a recovery resolves them, even in the process that resumed the
run), a channel with several recipients which of them already have a message (so
a retry does not text the others twice). The engine gives each channel it runs a
memory kept in the store; a channel used on its own keeps it in this process.
"""

from __future__ import annotations

import threading


class ChannelMemory:
    """Small text values by key, for one channel. Never raises: a store that cannot
    be read or written now is logged by its owner and this process's copy is used."""

    def get(self, key: str) -> str | None:
        raise NotImplementedError

    def set(self, key: str, value: str | None) -> None:
        """Remember ``value`` under ``key``; ``None`` forgets it."""
        raise NotImplementedError


class LocalMemory(ChannelMemory):
    """Kept in this process only: what a channel built by hand (``afs test``, a
    synchronous manager) remembers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._values.get(key)

    def set(self, key: str, value: str | None) -> None:
        with self._lock:
            if value is None:
                self._values.pop(key, None)
            else:
                self._values[key] = value
