"""``afs complete``, ``error``, ``cost-alert``, ``evaluation``, ``custom`` and ``test``:
send one event and say what each channel did with it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from afs_core.cli.common import DELIVERY_FAILED, OK, USAGE, UsageError, open_manager, settings, wait_timeout
from afs_core.events import EventType, NotificationEvent, NotificationLevel
from afs_core.redaction import scrub
from afs_core.results import DeliveryStatus, NotifyResult


def _report(args: argparse.Namespace, result: NotifyResult) -> int:
    if result.rejected is not None:
        print(f"afs: nothing sent: {result.rejected}", file=sys.stderr)
        return USAGE
    result.wait(wait_timeout(args))
    outcomes = result.outcomes
    if args.json:
        rows = {name: {"status": o.status.value, "error": o.error} for name, o in outcomes.items()}
        print(json.dumps({"event_id": result.event.event_id if result.event else None, "channels": rows}))
    else:
        for name, outcome in outcomes.items():
            status = outcome.status.value
            if outcome.status is DeliveryStatus.PENDING:
                status += " (stays in the outbox, will retry)"
            print(f"{name}: {status}" + (f": {outcome.error}" if outcome.error else ""))
    bad = [o for o in result.outcomes.values() if o.status in (DeliveryStatus.FAILED, DeliveryStatus.PENDING)]
    return DELIVERY_FAILED if bad else OK


def _send(args: argparse.Namespace, send: Any) -> int:
    sender = open_manager(args)
    try:
        return _report(args, send(sender))
    finally:
        sender.close(timeout=0.5)


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


def cmd_test(args: argparse.Namespace) -> int:
    import socket

    from afs_core.delivery.direct import send_now
    from afs_core.plugins import get_plugins

    env = settings(args)
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
    answer = receipt if isinstance(receipt, str) else json.dumps(receipt, default=str, ensure_ascii=False)
    answer = scrub(answer, channel.secrets())[:300]  # a service may echo the token it was reached with
    print(f"{args.name}: delivered to {channel.describe()}; the service answered: {answer}")
    return OK
