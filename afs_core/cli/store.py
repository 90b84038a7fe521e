"""``afs store info`` and ``afs store migrate``: which store this machine uses (SQLite
under AFS_HOME, or the PostgreSQL database AFS_STORE_URL names), its schema version
and what it holds; and bringing a shared database's schema up to date by hand."""

from __future__ import annotations

import argparse
import json
from typing import Any

from afs_core.cli.common import OK, settings


def cmd_store(args: argparse.Namespace) -> int:
    from afs_core.delivery.store import open_store

    store: Any = open_store(settings(args), read_only_ok=args.action != "migrate")
    if args.action == "migrate":
        applied = store.migrate()
        if args.json:
            print(json.dumps({"backend": store.backend, "applied": applied}))
        elif applied:
            print(f"{store.backend}: schema versions {', '.join(map(str, applied))} applied")
        else:
            print(f"{store.backend}: the schema is up to date")
        return OK
    info = store.info()
    if args.json:
        print(json.dumps(info))
        return OK
    print(f"{'backend':<16} {info['backend']}")
    print(f"{'where':<16} {info.get('url') or info.get('path') or 'memory (not durable)'}")
    print(f"{'schema version':<16} {info['schema_version'] or '- (SQLite: made up to date when opened)'}")
    print(f"{'pending':<16} {info['pending']}")
    for table, number in info["counts"].items():
        print(f"{table:<16} {number:,}")
    return OK
