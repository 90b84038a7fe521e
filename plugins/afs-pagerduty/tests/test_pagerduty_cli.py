"""``afs test pagerduty`` and the routing key kept out of every output: logs, describe,
repr, ``afs status``, ``afs history`` and the store itself."""

import json
import logging
import os
from pathlib import Path

from afs_core import NotificationManager
from afs_core.testing import Scripted
from afs_pagerduty import PagerDutyChannel

INVALID_KEY = Scripted(status=400, body=json.dumps({"status": "invalid event", "message": "Event object is invalid",
                                                    "errors": ["Invalid routing key"]}))


def test_afs_test_triggers_an_info_alert_and_resolves_it_at_once(afs_cli, webhook_server, routing_key):
    done = afs_cli("test", "pagerduty")
    assert done.returncode == 0, done.stderr
    trigger, resolve = webhook_server.received
    key = trigger.json["dedup_key"]
    assert key.startswith("afs/afs-test/test/") and len(key) == len("afs/afs-test/test/") + 32
    assert trigger.json["event_action"] == "trigger" and trigger.json["routing_key"] == routing_key
    sent = trigger.json["payload"]
    assert sent["severity"] == "info" and sent["summary"].startswith("AFS test notification — If you can read this")
    assert sent["component"] == "afs-test" and sent["group"] == "afs-test"
    assert resolve.json == {"routing_key": routing_key, "event_action": "resolve", "dedup_key": key}
    assert done.stdout.startswith("pagerduty: delivered to pagerduty http://127.0.0.1:")
    assert key in done.stdout and '"resolved"' in done.stdout
    assert routing_key not in done.stdout + done.stderr


def test_afs_test_with_a_wrong_routing_key_says_what_to_fix(afs_cli, webhook_server, routing_key):
    webhook_server.respond(INVALID_KEY)
    done = afs_cli("test", "pagerduty")
    assert done.returncode == 1 and len(webhook_server.received) == 1  # not retried, nothing to resolve
    assert "failed (permanent): HTTP 400: Event object is invalid: Invalid routing key" in done.stdout
    assert "check PAGERDUTY_ROUTING_KEY" in done.stdout
    assert routing_key not in done.stdout + done.stderr


def test_afs_test_says_when_its_alert_could_not_be_resolved(afs_cli, webhook_server, accepted):
    webhook_server.respond(accepted, Scripted(status=503, body="{}"))
    done = afs_cli("test", "pagerduty")
    assert done.returncode == 1 and len(webhook_server.received) == 2
    key = webhook_server.received[0].json["dedup_key"]
    assert f"the test alert was triggered but not resolved, resolve {key} in PagerDuty: HTTP 503" in done.stdout


def test_afs_test_without_a_routing_key_names_the_setting(afs_cli):
    done = afs_cli("test", "pagerduty", env={"PAGERDUTY_ROUTING_KEY": "", "PAGERDUTY_EVENTS_URL": ""})
    assert done.returncode == 2 and "set PAGERDUTY_ROUTING_KEY" in done.stderr
    half = afs_cli("test", "pagerduty", env={"PAGERDUTY_ROUTING_KEY": ""})
    assert half.returncode == 2 and "PAGERDUTY_ROUTING_KEY is missing, but PAGERDUTY_EVENTS_URL is set" in half.stderr


def test_afs_status_shows_the_endpoint_never_the_key(afs_cli, routing_key, events_url):
    done = afs_cli("status")
    assert done.returncode == 0, done.stderr
    assert f"pagerduty  configured      pagerduty {events_url}" in done.stdout
    assert routing_key not in done.stdout + done.stderr
    wrong = afs_cli("status", env={"PAGERDUTY_ROUTING_KEY": routing_key[:-1]})
    assert "misconfigured" in wrong.stdout and "got 31 characters" in wrong.stdout
    assert routing_key[:-1] not in wrong.stdout + wrong.stderr


def test_the_key_is_in_no_log_repr_history_or_store(afs_cli, webhook_server, routing_key, events_url,
                                                     afs_plugins, caplog):
    channel = PagerDutyChannel(routing_key, events_url)
    assert routing_key not in repr(channel) + channel.describe() + repr(vars(channel))
    webhook_server.respond(Scripted(status=400, body=json.dumps({"errors": [f"routing key {routing_key} unknown"]})))
    webhook_server.default = Scripted(status=503, body=f"down for {routing_key}")
    manager = NotificationManager(plugins=afs_plugins)
    manager.register_channel("pagerduty", channel)
    with caplog.at_level(logging.DEBUG):
        refused = manager.notify_training_failed("m", "run-1", "boom")
        waiting = manager.notify_nan_detected("m", "run-1")
        manager.flush(timeout=0.5)
        status = json.dumps(manager.get_status())
        manager.close(timeout=1)
    assert refused.wait(5) and "routing key *** unknown" in refused.outcomes["pagerduty"].error
    assert routing_key not in caplog.text + status + str(refused.outcomes) + str(waiting.outcomes)
    history = afs_cli("history", "--json")
    outbox = afs_cli("outbox", "list", "--json")
    assert "routing key *** unknown" in history.stdout and "down for ***" in history.stdout + outbox.stdout
    assert routing_key not in history.stdout + history.stderr + outbox.stdout + outbox.stderr
    stored = b"".join(path.read_bytes() for path in Path(os.environ["AFS_HOME"]).rglob("*") if path.is_file())
    assert routing_key.encode() not in stored
    assert len(webhook_server.received) >= 2 and all(r.json["routing_key"] == routing_key
                                                       for r in webhook_server.received)


def test_a_triggered_incident_in_the_store_is_remembered_by_dedup_key_only(run_python, webhook_server, routing_key):
    done = run_python("from afs_core import NotificationManager\nm = NotificationManager.from_env()\n"
                      "m.notify_training_failed('m', 'run-9', 'boom')\nprint(m.close(timeout=20))\n")
    assert done.stdout.strip() == "True", done.stderr
    stored = b"".join(path.read_bytes() for path in Path(os.environ["AFS_HOME"]).rglob("*") if path.is_file())
    assert b"incident:afs/run-9/failed" in stored and routing_key.encode() not in stored
