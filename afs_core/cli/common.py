"""What every ``afs`` subcommand shares: exit codes, settings, the manager and the store."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from afs_core.config import env_float, load_env

if TYPE_CHECKING:
    from afs_core.delivery.store import Store
    from afs_core.manager import NotificationManager

OK, DELIVERY_FAILED, USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input: one line on stderr, exit code 2, nothing sent."""


def settings(args: argparse.Namespace) -> dict[str, str]:
    return load_env(args.env_file)


def open_manager(args: argparse.Namespace) -> NotificationManager:
    """The manager from the settings, keeping only the ``--channel`` ones when given."""
    from afs_core.manager import NotificationManager

    manager = NotificationManager.from_env(args.env_file)
    # Not training code: AFS_STALL_AFTER watches the training process (under afs run, the
    # command it starts reads it itself), never the afs command waiting for it.
    manager.stop_watching(0)
    if args.channel:
        unknown = [name for name in args.channel if name not in manager.channels]
        if unknown:
            manager.close(timeout=0)
            configured = ", ".join(manager.channels) or "none"
            raise UsageError(f"--channel {unknown[0]}: not configured (configured: {configured})")
        for name in list(manager.channels):
            if name not in args.channel:
                manager.unregister_channel(name)
    return manager


def wait_timeout(args: argparse.Namespace) -> float:
    """``--timeout``, else ``AFS_FLUSH_TIMEOUT``: how long a command waits for deliveries."""
    if args.timeout is not None:
        return float(args.timeout)
    return env_float(settings(args), "AFS_FLUSH_TIMEOUT", 10.0)


def open_store_taking_journals(args: argparse.Namespace) -> Store:
    """The store, with what stopped processes left in their journals moved in."""
    from afs_core.delivery.engine import take_stopped_journals
    from afs_core.delivery.store import open_store

    store = open_store(settings(args), read_only_ok=True)
    if not store.read_only:
        take_stopped_journals(store)
    return store


def where(store: Store) -> dict[str, Any]:
    """Where the store is, for ``afs status``."""
    location = store.location
    url = getattr(store, "url", None)  # a shared database's, without its password
    return {"path": (None if location.path is None else str(location.path)) if url is None else store.backend,
            "durable": store.durable,
            "not_durable": None if store.durable else location.reason, "network_filesystem": location.network_fs,
            "read_only": location.reason if store.read_only else None}
