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
from afs_core.cli.parser import build_parser
from afs_core.errors import ConfigurationError, PluginLoadError

if TYPE_CHECKING:
    import argparse


def _commands() -> dict[str, Callable[[argparse.Namespace], int]]:
    from afs_core.cli import init, outbox, run, send, status

    return {
        "status": status.cmd_status, "plugins": status.cmd_plugins, "history": outbox.cmd_history,
        "outbox": outbox.cmd_outbox, "run": run.cmd_run, "complete": send.cmd_complete, "error": send.cmd_error,
        "cost-alert": send.cmd_cost_alert, "evaluation": send.cmd_evaluation, "custom": send.cmd_custom,
        "test": send.cmd_test,
        "init": init.cmd_init,
    }


def main(argv: Sequence[str] | None = None, prog: str = "afs") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
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
