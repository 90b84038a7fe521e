"""The ``afs`` command: send notifications, wrap a training run, look at history and outbox.

Exit codes: 0 done, 1 a delivery failed (or is still pending when the command
ends), 2 bad usage or configuration (then nothing is sent). One module per group
of subcommands; this one dispatches.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from afs_core.cli.common import USAGE, UsageError
from afs_core.cli.parser import BUILTIN_COMMANDS, build_parser, missing_plugin_command
from afs_core.errors import ConfigurationError, PluginLoadError

if TYPE_CHECKING:
    import argparse

    from afs_core.plugins import CommandSpec


def _commands() -> dict[str, Callable[[argparse.Namespace], int]]:
    from afs_core.cli import init, outbox, run, send, status, store

    return {
        "status": status.cmd_status, "plugins": status.cmd_plugins, "history": outbox.cmd_history,
        "outbox": outbox.cmd_outbox, "run": run.cmd_run, "complete": send.cmd_complete, "error": send.cmd_error,
        "cost-alert": send.cmd_cost_alert, "evaluation": send.cmd_evaluation, "custom": send.cmd_custom,
        "test": send.cmd_test,
        "init": init.cmd_init, "store": store.cmd_store,
    }


def _plugin_commands() -> dict[str, CommandSpec]:
    """What plugins add to the command line; none when plugins cannot be loaded (a
    strict host with a broken plugin: the core's commands still say why)."""
    from afs_core.plugins import get_plugins

    try:
        return get_plugins().commands(BUILTIN_COMMANDS)
    except PluginLoadError as exc:
        print(f"afs: plugin commands not loaded: {exc}", file=sys.stderr)
        return {}


def main(argv: Sequence[str] | None = None, prog: str = "afs") -> int:
    plugin_commands = _plugin_commands()
    missing = missing_plugin_command(sys.argv[1:] if argv is None else argv, prog, plugin_commands)
    if missing is not None:
        print(missing, file=sys.stderr)
        return USAGE
    args = build_parser(prog, plugin_commands).parse_args(argv)
    try:
        if args.command in plugin_commands:
            return int(plugin_commands[args.command].run(args))
        return _commands()[args.command](args)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return USAGE
    except (ConfigurationError, PluginLoadError) as exc:  # AFS_STRICT_PLUGINS=1 makes a broken plugin one
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return USAGE
    except (OSError, sqlite3.Error) as exc:  # an unusable AFS_HOME, a full disk
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return USAGE


def entry_point() -> None:
    sys.exit(main())
