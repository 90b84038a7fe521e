"""``afs status`` and ``afs plugins``: where the outbox is, which channels are
configured (or what they miss), and which plugins gave what."""

from __future__ import annotations

import argparse
import json
from typing import Any

from afs_core.cli.common import OK, open_store_taking_journals, settings, where
from afs_core.config import parse_bool
from afs_core.delivery.store import ChannelCounts
from afs_core.errors import ConfigurationError


def cmd_status(args: argparse.Namespace) -> int:
    from afs_core.plugins import get_plugins

    env = settings(args)
    plugins = get_plugins(env)
    store = open_store_taking_journals(args)
    counts = store.counts()
    rows = []
    for name, spec in sorted(plugins.channels.items()):
        queued = counts.get(name, ChannelCounts())
        row: dict[str, Any] = {"channel": name, "distribution": spec.distribution or "afs-core",
                               "pending": queued.pending, "dead": queued.dead}
        try:
            channel = spec.channel_class.from_env(env)
        except ConfigurationError as exc:
            row.update(state="misconfigured", detail=str(exc))
        except Exception as exc:  # a plugin's bug: say so, keep going
            row.update(state="broken", detail=f"{type(exc).__name__}: {exc}")
        else:
            if channel is None and name == "console" and parse_bool(env.get("AFS_CONSOLE", "")) is not False:
                row.update(state="fallback", detail="used when no other channel is configured")
            elif channel is None:
                needs = ", ".join(getattr(spec.channel_class, "required_settings", ())) or "its settings"
                row.update(state="not configured", detail=f"set {needs}")
            else:
                row.update(state="configured", detail=channel.describe())
        rows.append(row)
    failures = [{"plugin": f.name, "distribution": f.distribution, "error": f.error} for f in plugins.failures]
    location = where(store)
    if args.json:
        print(json.dumps({"store": location, "channels": rows, "plugin_failures": failures}))
        return OK
    if location["durable"]:
        shared = (f"  (on {location['network_filesystem']}, shared with other hosts: this host's own file, no WAL)"
                  if location["network_filesystem"] else "")
        read_only = f"  ({location['read_only']}; shown, not changed)" if location["read_only"] else ""
        print(f"{'outbox':<10} {location['path']}{shared}{read_only}")
    else:
        print(f"{'outbox':<10} not durable: {location['not_durable']}")
    for row in rows:
        queue = f"  [{row['pending']} pending, {row['dead']} dead]" if row["pending"] or row["dead"] else ""
        print(f"{row['channel']:<10} {row['state']:<15} {row['detail']}{queue}")
    for failure in failures:
        print(f"plugin {failure['plugin']} ({failure['distribution']}) skipped: {failure['error']}")
    return OK


def cmd_plugins(args: argparse.Namespace) -> int:
    from afs_core.cli.parser import BUILTIN_COMMANDS
    from afs_core.plugins import get_plugins

    plugins = get_plugins(settings(args))
    plugins.commands(BUILTIN_COMMANDS)  # so each plugin's commands are shown with it
    infos = plugins.plugins()
    if args.json:
        print(json.dumps({
            "plugins": [{"name": p.name, "distribution": p.distribution, "version": p.version,
                         "channels": list(p.channels), "commands": list(p.commands), "hooks": list(p.hooks)}
                        for p in infos],
            "failures": [{"plugin": f.name, "distribution": f.distribution, "error": f.error}
                         for f in plugins.failures],
        }))
        return OK
    for info in infos:
        channels = f" channels: {', '.join(info.channels)}" if info.channels else ""
        commands = f" commands: {', '.join(info.commands)}" if info.commands else ""
        print(f"{info.name}  {info.distribution or '-'} {info.version or ''}{channels}{commands}"
              f"  hooks: {', '.join(info.hooks)}")
    for failure in plugins.failures:
        print(f"skipped {failure.name} ({failure.distribution}): {failure.error}")
    return OK
