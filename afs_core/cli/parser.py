"""The ``afs`` command's arguments: every subcommand, its flags, and values checked as
they are parsed, so bad input is one line naming the flag (exit code 2)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from afs_core.cli.common import USAGE
from afs_core.config import parse_duration
from afs_core.events import EventType, NotificationLevel

if TYPE_CHECKING:
    from afs_core.plugins import CommandSpec

OUTBOX_EXIT_CODES = """exit codes:
  list   0 nothing is dead (pending deliveries are fine), 1 some are dead
  flush  0 everything pending went out, 1 some failed or are still pending, 130 stopped by Ctrl-C
  retry  0 the delivery is pending again, 1 it is not a dead delivery
  all    2 bad usage or configuration"""

INIT_EXIT_CODES = """exit codes:
  0  written (or nothing to write)
  1  the file exists and was not changed, or a test message failed (what was written stays)
  2  bad usage, or a setting the channel refused (nothing written)"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line that names the flag, not a page of usage.
        self.exit(USAGE, f"{self.prog}: error: {message}\n")


def _metrics(text: str) -> dict[str, float]:
    """``accuracy=0.95,f1=0.92`` as a mapping; a bad pair names itself."""
    metrics: dict[str, float] = {}
    for pair in (p.strip() for p in text.split(",")):
        if not pair:
            continue
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"{pair!r} is not name=value")
        try:
            metrics[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name.strip()}={value!r} is not a number") from None
    return metrics


def _level(text: str) -> NotificationLevel:
    try:
        return NotificationLevel(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"unknown level {text!r} (choose from {', '.join(level.value for level in NotificationLevel)})"
        ) from None


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _event_type(text: str) -> EventType:
    try:
        return EventType(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"unknown event type {text!r}") from None


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _common_flags(*, nested: bool = False) -> _Parser:
    """The flags every subcommand takes. ``nested``: for ``afs outbox ACTION``, where a
    flag not given after the action must keep what was given before it."""
    keep: dict[str, Any] = {"default": argparse.SUPPRESS} if nested else {}
    common = _Parser(add_help=False)
    common.add_argument("--env-file", metavar="PATH",
                        help="read settings from this .env file (default: the nearest .env)", **keep)
    common.add_argument("--channel", action="append", metavar="NAME", help="only this channel (repeatable)", **keep)
    common.add_argument("--json", action="store_true", help="machine-readable output", **keep)
    common.add_argument("--timeout", type=_non_negative, metavar="SECONDS",
                        help="how long to wait for deliveries (default AFS_FLUSH_TIMEOUT, 10)", **keep)
    return common


def _assignment(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` for ``afs init --set``; the text is never quoted in the error (it may hold a secret)."""
    key, sep, value = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", key):
        raise argparse.ArgumentTypeError("expected KEY=VALUE (what was given is not shown: it may be a secret)")
    if "\x00" in value:
        raise argparse.ArgumentTypeError(f"{key}: a setting cannot hold a NUL character")
    return key, value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def build_parser(
    prog: str = "afs", plugin_commands: Mapping[str, CommandSpec] | None = None
) -> argparse.ArgumentParser:
    """The whole command line; ``plugin_commands`` (from the ``afs_register_commands``
    hook) are added after the core's own, each with ``--env-file``."""
    common = _common_flags()
    nested = _common_flags(nested=True)

    parser = _Parser(prog=prog, description="AFS notifications: tell people what training runs are doing.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    commands.add_parser("status", parents=[common], help="installed channels, their settings, the outbox")

    complete = commands.add_parser("complete", parents=[common], help="a run finished")
    complete.add_argument("--model", required=True)
    complete.add_argument("--run-id", required=True)
    complete.add_argument("--duration", type=_non_negative, required=True, help="seconds")
    complete.add_argument("--loss", type=float, help="final loss")
    complete.add_argument("--metrics", type=_metrics, default={}, help='"accuracy=0.95,f1=0.92"')

    error = commands.add_parser("error", parents=[common], help="a run failed")
    error.add_argument("--model", required=True)
    error.add_argument("--run-id", required=True)
    error.add_argument("--error", required=True, help="what went wrong")

    cost = commands.add_parser("cost-alert", parents=[common], help="a run is over budget")
    cost.add_argument("--cost", type=_non_negative, required=True)
    cost.add_argument("--threshold", type=_non_negative, required=True)
    cost.add_argument("--model")
    cost.add_argument("--run-id")

    evaluation = commands.add_parser("evaluation", parents=[common], help="an evaluation finished")
    evaluation.add_argument("--model", required=True)
    evaluation.add_argument("--run-id", required=True)
    evaluation.add_argument("--metrics", type=_metrics, required=True, help='"accuracy=0.95,perplexity=1.23"')

    custom = commands.add_parser("custom", parents=[common], help="any message")
    custom.add_argument("--title", required=True)
    custom.add_argument("--message", required=True)
    custom.add_argument("--level", type=_level, default=NotificationLevel.INFO)
    custom.add_argument("--event-type", type=_event_type, default=EventType.ERROR_OCCURRED)
    custom.add_argument("--model")
    custom.add_argument("--run-id")

    run = commands.add_parser("run", parents=[common], help="run a training command and report how it ends",
                              usage="%(prog)s [--model M] [--run-id R] [--start-grace S] [--stall-after D] "
                              "-- COMMAND [ARG ...]")
    run.add_argument("--model")
    run.add_argument("--run-id")
    run.add_argument("--start-grace", type=_non_negative, default=10.0, metavar="SECONDS",
                     help="how long the command's own code may take to report the run's start before "
                     "afs run reports it (default 10)")
    run.add_argument("--stall-after", type=_duration, metavar="DURATION",
                     help="report the run stalled when the command printed nothing and reported no progress for "
                     "this long (90s, 30m, 2h), and again when it speaks")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")

    history = commands.add_parser("history", parents=[common], help="recent events and their deliveries",
                                  description="Recent events, newest first: time, level, title, run id, model and "
                                  "what each channel did. --json carries every field of each event.")
    history.add_argument("--run-id")
    history.add_argument("--limit", type=_count, default=20)

    outbox = commands.add_parser(
        "outbox", parents=[common], help="pending and dead deliveries",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Deliveries that have not gone out: pending (waiting for a try or a retry) and dead (failed "
        "for good, with the reason). Events that stopped processes left in their journals are taken in first.",
        epilog=OUTBOX_EXIT_CODES,
    )
    outbox_actions = outbox.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    outbox_actions.add_parser("list", parents=[nested], help="list them (the default)", epilog=OUTBOX_EXIT_CODES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    outbox_actions.add_parser("flush", parents=[nested],
                              help="deliver what is pending for the configured channels, now",
                              epilog=OUTBOX_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    retry = outbox_actions.add_parser("retry", parents=[nested], help="queue a dead delivery again",
                                      epilog=OUTBOX_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    retry.add_argument("id", type=int)

    commands.add_parser("plugins", parents=[common], help="installed plugins, channels and hooks")

    store = commands.add_parser("store", parents=[common], help="the store: backend, schema version, counts",
                                description="Which store this machine uses (SQLite under AFS_HOME, or the PostgreSQL "
                                "database AFS_STORE_URL names), its schema version and what it holds.")
    store_actions = store.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    store_actions.add_parser("info", parents=[nested], help="backend, schema version and counts (the default)")
    store_actions.add_parser("migrate", parents=[nested], help="bring the schema up to date now (processes do it "
                             "themselves when they start)")

    test = commands.add_parser("test", parents=[common], help="send a test notification through one channel")
    test.add_argument("name", metavar="CHANNEL")

    init = commands.add_parser(
        "init", help="set up channels: enter and check their settings, write .env (0600), send a test",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=INIT_EXIT_CODES,
        description="On a terminal: choose installed channels, enter their settings (secrets are not shown),\n"
        "have each channel check them, write them to .env (mode 0600; an existing file is updated\n"
        "only if you say so, keeping its other lines) and send a test message through each.\n"
        "With --channel (and --set KEY=VALUE for its settings): the same without questions, for scripts.",
    )
    init.add_argument("--env-file", metavar="PATH", help="the file to write (default: .env in this directory)")
    init.add_argument("--channel", action="append", metavar="NAME",
                      help="set up this channel without questions (repeatable)")
    init.add_argument("--set", action="append", type=_assignment, default=[], dest="assignments",
                      metavar="KEY=VALUE", help="a setting of a --channel (repeatable)")
    init.add_argument("--force", action="store_true", help="update an existing file (its other lines are kept)")
    init.add_argument("--test", action="store_true", help="send a test message through each channel set up")

    env_file = _Parser(add_help=False)
    env_file.add_argument("--env-file", metavar="PATH",
                          help="read settings from this .env file (default: the nearest .env)")
    for spec in (plugin_commands or {}).values():
        who = spec.distribution or spec.plugin
        command = commands.add_parser(spec.name, parents=[env_file], help=f"{spec.help} (from {who})".lstrip())
        spec.configure(command)
    return parser


#: The core's own subcommands: no plugin may take these names.
BUILTIN_COMMANDS = frozenset({
    "status", "complete", "error", "cost-alert", "evaluation", "custom", "run", "history", "outbox", "plugins", "test",
    "init", "store",
})

#: Commands that plugin distributions add, by the distribution: ``afs NAME`` without it
#: says what to install, not "invalid choice". Only names: nothing of the plugin is imported.
PLUGIN_COMMANDS = {"dashboard": "afs-dashboard"}


def missing_plugin_command(argv: Sequence[str], prog: str, available: Collection[str]) -> str | None:
    """What to say when ``argv`` asks for a known plugin's command that is not here (None: it is not that)."""
    name = next((arg for arg in argv if not arg.startswith("-")), None)
    if name is None or name not in PLUGIN_COMMANDS or name in available:
        return None
    distribution = PLUGIN_COMMANDS[name]
    from importlib import metadata

    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return f"{prog} {name} comes with the {distribution} distribution: pip install {distribution}"
    return (f"{prog} {name} comes with the {distribution} distribution, which is installed but was not loaded "
            f"(AFS_LOAD_PLUGINS leaves it out, or it failed: {prog} plugins says)")
