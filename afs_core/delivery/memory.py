"""A channel's memory kept in the store, so another process on it knows it too
(the process that resumes a run resolves the incident the crashed one opened)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from afs_core.channels.memory import LocalMemory
from afs_core.delivery.store import Store

_STORE_ERRORS = (sqlite3.Error, OSError)


class StoredMemory(LocalMemory):
    """Written through to the store's small-state table under ``channel:<name>:``; this
    process's copy answers while the store cannot (``trouble`` is told why)."""

    def __init__(self, store: Store, channel: str, trouble: Callable[[BaseException], None]) -> None:
        super().__init__()
        self._store = store
        self._prefix = f"channel:{channel}:"
        self._trouble = trouble

    def get(self, key: str) -> str | None:
        try:
            return self._store.get_state(self._prefix + key)
        except _STORE_ERRORS as exc:
            self._trouble(exc)
            return super().get(key)

    def set(self, key: str, value: str | None) -> None:
        super().set(key, value)
        try:
            if value is None:
                self._store.forget_state(self._prefix + key)
            else:
                self._store.set_state(self._prefix + key, value)
        except _STORE_ERRORS as exc:
            self._trouble(exc)
