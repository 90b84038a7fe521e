"""The ``afs`` command: send notifications, wrap a training run, look at history and outbox.

Exit codes: 0 done, 1 a delivery failed (or is still pending when the command
ends), 2 bad usage or configuration (then nothing is sent).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from afs_core.config import env_float, load_env
from afs_core.errors import ConfigurationError
from afs_core.events import EventType, NotificationEvent, NotificationLevel
from afs_core.formatting import format_duration
from afs_core.results import DeliveryStatus, NotifyResult

OK, DELIVERY_FAILED, USAGE = 0, 1, 2

OUTBOX_EXIT_CODES = """exit codes:
  list   0 nothing is dead (pending deliveries are fine), 1 some are dead
  flush  0 everything pending went out, 1 some failed or are still pending
  retry  0 the delivery is pending again, 1 it is not a dead delivery
  all    2 bad usage or configuration"""


class UsageError(Exception):
    """Bad input: one line on stderr, exit code 2, nothing sent."""


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
            f"unknown level {text!r} (choose from {', '.join(l.value for l in NotificationLevel)})"
        ) from None


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


def build_parser(prog: str = "afs") -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--env-file", metavar="PATH", help="read settings from this .env file (default: the nearest .env)")
    common.add_argument("--channel", action="append", metavar="NAME", help="only this channel (repeatable)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("--timeout", type=_non_negative, metavar="SECONDS",
                        help="how long to wait for deliveries (default AFS_FLUSH_TIMEOUT, 10)")

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
                              usage="%(prog)s [--model M] [--run-id R] -- COMMAND [ARG ...]")
    run.add_argument("--model")
    run.add_argument("--run-id")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")

    history = commands.add_parser("history", parents=[common], help="recent events and their deliveries",
                                  description="Recent events, newest first: time, level, title, run id, model and "
                                  "what each channel did. --json carries every field of each event.")
    history.add_argument("--run-id")
    history.add_argument("--limit", type=int, default=20)

    outbox = commands.add_parser(
        "outbox", parents=[common], help="pending and dead deliveries",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Deliveries that have not gone out: pending (waiting for a try or a retry) and dead (failed "
        "for good, with the reason). Events that stopped processes left in their journals are taken in first.",
        epilog=OUTBOX_EXIT_CODES,
    )
    outbox_actions = outbox.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    outbox_actions.add_parser("list", parents=[common], help="list them (the default)", epilog=OUTBOX_EXIT_CODES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    outbox_actions.add_parser("flush", parents=[common], help="deliver what is pending for the configured channels, now",
                              epilog=OUTBOX_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    retry = outbox_actions.add_parser("retry", parents=[common], help="queue a dead delivery again",
                                      epilog=OUTBOX_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    retry.add_argument("id", type=int)

    commands.add_parser("plugins", parents=[common], help="installed plugins, channels and hooks")

    test = commands.add_parser("test", parents=[common], help="send a test notification through one channel")
    test.add_argument("name", metavar="CHANNEL")
    return parser


# -- helpers ------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> dict[str, str]:
    return load_env(args.env_file)


def _manager(args: argparse.Namespace) -> Any:
    from afs_core.manager import NotificationManager

    manager = NotificationManager.from_env(args.env_file)
    if args.channel:
        unknown = [name for name in args.channel if name not in manager.handlers]
        if unknown:
            manager.close(timeout=0)
            raise UsageError(f"--channel {unknown[0]}: not configured (configured: {', '.join(manager.handlers) or 'none'})")
        for name in list(manager.handlers):
            if name not in args.channel:
                manager.unregister_handler(name)
    return manager


def _wait_timeout(args: argparse.Namespace) -> float:
    if args.timeout is not None:
        return float(args.timeout)
    return env_float(_settings(args), "AFS_FLUSH_TIMEOUT", 10.0)


def _report(args: argparse.Namespace, result: NotifyResult) -> int:
    if result.rejected is not None:
        print(f"afs: nothing sent: {result.rejected}", file=sys.stderr)
        return USAGE
    result.wait(_wait_timeout(args))
    rows = {name: {"status": o.status.value, "error": o.error} for name, o in result.outcomes.items()}
    if args.json:
        print(json.dumps({"event_id": result.event.event_id if result.event else None, "channels": rows}))
    else:
        for name, row in rows.items():
            status = row["status"] + (" (stays in the outbox, will retry)" if row["status"] == "pending" else "")
            print(f"{name}: {status}" + (f": {row['error']}" if row["error"] else ""))
    bad = [o for o in result.outcomes.values() if o.status in (DeliveryStatus.FAILED, DeliveryStatus.PENDING)]
    return DELIVERY_FAILED if bad else OK


def _send(args: argparse.Namespace, send: Any) -> int:
    manager = _manager(args)
    try:
        return _report(args, send(manager))
    finally:
        manager.close(timeout=0.5)


# -- commands -------------------------------------------------------------------------------


def cmd_complete(args: argparse.Namespace) -> int:
    return _send(args, lambda m: m.notify_training_completed(args.model, args.run_id, args.duration,
                                                             final_loss=args.loss, eval_metrics=args.metrics))


def cmd_error(args: argparse.Namespace) -> int:
    return _send(args, lambda m: m.notify_training_failed(args.model, args.run_id, args.error))


def cmd_cost_alert(args: argparse.Namespace) -> int:
    return _send(args, lambda m: m.notify_cost_alert(args.cost, args.threshold, model_name=args.model,
                                                     run_id=args.run_id))


def cmd_evaluation(args: argparse.Namespace) -> int:
    return _send(args, lambda m: m.notify_evaluation_completed(args.model, args.run_id, args.metrics))


def cmd_custom(args: argparse.Namespace) -> int:
    return _send(args, lambda m: m.notify(args.title, args.message, event_type=args.event_type, level=args.level,
                                          model_name=args.model, run_id=args.run_id))


def cmd_run(args: argparse.Namespace) -> int:
    from afs_core.cli.run import command_label, run_watched

    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        raise UsageError("run: give the command after --, e.g. afs run -- python train.py")
    model = args.model or command_label(command)
    run_id = args.run_id or f"{model}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    manager = _manager(args)
    try:
        manager.notify(f"Training started: {model}", f"Run {run_id} started: {' '.join(command)}",
                       event_type=EventType.TRAINING_STARTED, level=NotificationLevel.INFO,
                       model_name=model, run_id=run_id, command=" ".join(command))
        try:
            outcome = run_watched(command)
        except OSError as exc:
            manager.notify_training_failed(model, run_id, f"could not start {command[0]}: {exc}")
            print(f"afs: could not start {command[0]}: {exc}", file=sys.stderr)
            return 127
        if outcome.returncode == 0:
            manager.notify_training_completed(model, run_id, duration=outcome.duration)
        else:
            context: dict[str, Any] = {"exit_code": outcome.exit_code, "duration": outcome.duration}
            if outcome.signal_name:
                context["signal"] = outcome.signal_name
            if outcome.tail:
                context["traceback"] = "\n".join(outcome.tail)  # shown as a code block by every channel
            manager.send_event(NotificationEvent(
                EventType.TRAINING_FAILED, f"Training failed: {model}", f"Run {run_id} {outcome.explanation}.",
                model_name=model, run_id=run_id, error_details=outcome.explanation, context=context,
            ))
        return outcome.exit_code
    finally:
        manager.close(timeout=_wait_timeout(args))


def _store(args: argparse.Namespace) -> Any:
    """The store, with what stopped processes left in their journals moved in."""
    from afs_core.delivery.engine import take_stopped_journals
    from afs_core.delivery.store import open_store

    store = open_store(_settings(args))
    take_stopped_journals(store)
    return store


def _where(store: Any) -> dict[str, Any]:
    location = store.location
    return {"path": None if location.path is None else str(location.path), "durable": store.durable,
            "not_durable": None if store.durable else location.reason, "network_filesystem": location.network_fs}


def cmd_status(args: argparse.Namespace) -> int:
    from afs_core.plugins import get_plugins

    env = _settings(args)
    plugins = get_plugins(env)
    store = _store(args)
    counts = store.counts()
    rows = []
    for name, spec in sorted(plugins.channels.items()):
        row: dict[str, Any] = {"channel": name, "distribution": spec.distribution or "afs-core",
                               "pending": counts.get(name, {}).get("pending", 0),
                               "dead": counts.get(name, {}).get("dead", 0)}
        try:
            channel = spec.channel_class.from_env(env)
        except ConfigurationError as exc:
            row.update(state="misconfigured", detail=str(exc))
        except Exception as exc:  # a plugin's bug: say so, keep going
            row.update(state="broken", detail=f"{type(exc).__name__}: {exc}")
        else:
            if channel is None and name == "console" and env.get("AFS_CONSOLE", "").strip().lower() not in {"false", "0", "no", "off"}:
                row.update(state="fallback", detail="used when no other channel is configured")
            elif channel is None:
                needs = ", ".join(getattr(spec.channel_class, "required_settings", ())) or "its settings"
                row.update(state="not configured", detail=f"set {needs}")
            else:
                row.update(state="configured", detail=channel.describe())
        rows.append(row)
    failures = [{"plugin": f.name, "distribution": f.distribution, "error": f.error} for f in plugins.failures]
    where = _where(store)
    if args.json:
        print(json.dumps({"store": where, "channels": rows, "plugin_failures": failures}))
        return OK
    if where["durable"]:
        shared = (f"  (on {where['network_filesystem']}, shared with other hosts: this host's own file, no WAL)"
                  if where["network_filesystem"] else "")
        print(f"{'outbox':<10} {where['path']}{shared}")
    else:
        print(f"{'outbox':<10} not durable: {where['not_durable']}")
    for row in rows:
        queue = f"  [{row['pending']} pending, {row['dead']} dead]" if row["pending"] or row["dead"] else ""
        print(f"{row['channel']:<10} {row['state']:<15} {row['detail']}{queue}")
    for failure in failures:
        print(f"plugin {failure['plugin']} ({failure['distribution']}) skipped: {failure['error']}")
    return OK


def cmd_history(args: argparse.Namespace) -> int:
    entries = _store(args).history(run_id=args.run_id, limit=args.limit)
    if args.json:
        print(json.dumps([{
            **e.event, "event_id": e.event_id, "created": e.created, "run_id": e.run_id, "event_type": e.event_type,
            "level": e.level, "title": e.title, "model_name": e.model_name,
            "deliveries": {d.channel: {"status": d.status, "attempts": d.attempts, "error": d.last_error,
                                       "next_attempt": d.next_attempt} for d in e.deliveries},
        } for e in entries], default=str))
        return OK
    for entry in entries:
        when = dt.datetime.fromtimestamp(entry.created).strftime("%Y-%m-%d %H:%M:%S")
        deliveries = ", ".join(f"{d.channel}={d.status}" for d in entry.deliveries) or "no channel"
        run = "".join(f"  {label} {value}" for label, value in (("run", entry.run_id), ("model", entry.model_name))
                      if value)
        print(f"{when}  {entry.level:<8} {entry.title}{run}  [{deliveries}]")
    return OK


def cmd_outbox(args: argparse.Namespace) -> int:
    from afs_core.delivery.store import DEAD

    store = _store(args)
    if args.action == "retry":
        if not store.requeue(args.id):
            print(f"afs: delivery {args.id} is not a dead delivery", file=sys.stderr)
            return DELIVERY_FAILED
        print(f"delivery {args.id} is pending again")
        return OK
    if args.action == "flush":
        return _flush_outbox(args, store)
    rows = store.outbox()
    if args.json:
        print(json.dumps([{"id": r.delivery_id, "channel": r.channel, "status": r.status, "title": r.title,
                           "run_id": r.run_id, "attempts": r.attempts, "error": r.last_error,
                           "next_attempt": r.next_attempt} for r in rows]))
    else:
        now = time.time()
        for r in rows:
            when = ""
            if r.status != DEAD and r.next_attempt > now + 1:
                when = f", next try in {format_duration(r.next_attempt - now)}"
            print(f"{r.delivery_id:>6}  {r.channel:<10} {r.status:<8} {r.attempts} tries{when}  {r.title}"
                  + (f"  ({r.last_error})" if r.last_error else ""))
        if not rows:
            print("the outbox is empty")
    return DELIVERY_FAILED if any(r.status == DEAD for r in rows) else OK


def _flush_outbox(args: argparse.Namespace, store: Any) -> int:
    from afs_core.delivery.store import DEAD, DELIVERED, FILTERED, PENDING

    manager = _manager(args)  # its workers deliver what is pending for its channels
    try:
        names = list(manager.handlers)
        store.make_due(names)  # "now": not after a backoff or a Retry-After
        wanted = [r.delivery_id for r in store.outbox(statuses=(PENDING,), limit=10**9) if r.channel in names]
        total = len(wanted)
        show = total > 20 and not args.json and sys.stderr.isatty()
        deadline = time.monotonic() + _wait_timeout(args)
        while True:
            left = store.statuses(wanted).get(PENDING, 0) if wanted else 0
            if show:
                done = total - left
                print(f"\r[{'#' * int(30 * done / total):<30}] {done}/{total}", end="", file=sys.stderr, flush=True)
            if left == 0 or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        if show:
            print(file=sys.stderr)
    finally:
        manager.close(timeout=1)
    now = store.statuses(wanted) if wanted else {}
    went, dead = now.get(DELIVERED, 0) + now.get(FILTERED, 0), now.get(DEAD, 0)
    left = {n: store.pending([n]).total for n in names}
    left = {n: count for n, count in left.items() if count}
    if args.json:
        print(json.dumps({"pending_before": total, "delivered": went, "dead": dead, "pending_after": left}))
    else:
        print(f"{went} of {total} pending deliveries went out"
              + (f"; {dead} failed for good (afs outbox shows why)" if dead else "")
              + (f"; still pending: {', '.join(f'{n} {c}' for n, c in left.items())}" if left else ""))
    return OK if not left and not dead else DELIVERY_FAILED


def cmd_plugins(args: argparse.Namespace) -> int:
    from afs_core.plugins import get_plugins

    plugins = get_plugins(_settings(args))
    infos = plugins.plugins()
    if args.json:
        print(json.dumps({
            "plugins": [{"name": p.name, "distribution": p.distribution, "version": p.version,
                         "channels": list(p.channels), "hooks": list(p.hooks)} for p in infos],
            "failures": [{"plugin": f.name, "distribution": f.distribution, "error": f.error} for f in plugins.failures],
        }))
        return OK
    for info in infos:
        channels = f" channels: {', '.join(info.channels)}" if info.channels else ""
        print(f"{info.name}  {info.distribution or '-'} {info.version or ''}{channels}  hooks: {', '.join(info.hooks)}")
    for failure in plugins.failures:
        print(f"skipped {failure.name} ({failure.distribution}): {failure.error}")
    return OK


def cmd_test(args: argparse.Namespace) -> int:
    import socket

    from afs_core.delivery.direct import send_now
    from afs_core.plugins import get_plugins

    env = _settings(args)
    plugins = get_plugins(env)
    spec = plugins.channels.get(args.name)
    if spec is None:
        raise UsageError(f"test: no channel {args.name!r} is installed (installed: {', '.join(plugins.channels)})")
    channel = spec.channel_class.from_env(env)
    if channel is None:
        needs = ", ".join(getattr(spec.channel_class, "required_settings", ())) or "its settings"
        raise UsageError(f"test: the {args.name} channel is not configured: set {needs}")
    event = NotificationEvent(
        EventType.TRAINING_COMPLETED, "AFS test notification",
        f"If you can read this, the {args.name} channel works. Sent by `afs test` from {socket.gethostname()}.",
        level=NotificationLevel.INFO, model_name="afs-test", run_id="afs-test", tags=["test"],
    )
    try:
        outcome = send_now(channel, event, plugins=plugins, name=args.name)  # the path every event takes
    finally:
        channel.close()
    if outcome.status is DeliveryStatus.FILTERED:
        print(f"{args.name}: a plugin's afs_filter_event held the test back")
        return DELIVERY_FAILED
    if not outcome.delivered:
        print(f"{args.name}: failed ({'permanent' if outcome.permanent else 'transient'}): {outcome.error}")
        return DELIVERY_FAILED
    receipt = outcome.receipt
    answer = receipt[:300] if isinstance(receipt, str) else json.dumps(receipt, default=str)[:300]
    print(f"{args.name}: delivered to {channel.describe()}; the service answered: {answer}")
    return OK


COMMANDS = {
    "status": cmd_status, "complete": cmd_complete, "error": cmd_error, "cost-alert": cmd_cost_alert,
    "evaluation": cmd_evaluation, "custom": cmd_custom, "run": cmd_run, "history": cmd_history,
    "outbox": cmd_outbox, "plugins": cmd_plugins, "test": cmd_test,
}


def main(argv: Sequence[str] | None = None, prog: str = "afs") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return USAGE
    except ConfigurationError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return USAGE
    except (OSError, sqlite3.Error) as exc:  # an unusable AFS_HOME, a full disk
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return USAGE


def entry_point() -> None:
    sys.exit(main())

