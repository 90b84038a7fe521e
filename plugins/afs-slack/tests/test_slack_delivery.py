"""SlackNotifier against a real HTTP server on 127.0.0.1 with scripted answers."""

import json
import logging
import time

import pytest

from afs_core import NotificationManager, PermanentDeliveryError, TransientDeliveryError
from afs_core.testing import Scripted
from afs_slack import SlackNotifier

TOKEN = "T0AAA/B0BBB/sekr1tTOKEN"


@pytest.fixture
def slack(webhook_server, afs_plugins):
    notifier = SlackNotifier(webhook_url=f"{webhook_server.url}/services/{TOKEN}", timeout=2)
    yield notifier
    notifier.close()


def test_delivers_block_kit_json_and_reads_ok(slack, webhook_server, make_event):
    assert slack.send(make_event(metrics={"accuracy": 0.954321}))
    request = webhook_server.received[0]
    assert request.path == f"/services/{TOKEN}"
    assert request.headers["Content-Type"].startswith("application/json")
    payload = request.json
    assert payload["blocks"][0]["text"]["text"] == "✅ Training completed: tiny-model"
    assert payload["attachments"][0]["color"] == "#2EB67D"
    assert "*accuracy*\n0.9543" in json.dumps(payload, ensure_ascii=False).replace("\\n", "\n")


def test_send_batch_reuses_one_connection(slack, webhook_server, make_event):
    assert slack.send_batch([make_event(title=f"event {i}") for i in range(5)]) == 5
    assert len({r.client_port for r in webhook_server.received}) == 1
    assert [r.json["blocks"][0]["text"]["text"] for r in webhook_server.received][-1].endswith("event 4")


def test_channel_override_sent_only_when_configured(webhook_server, afs_plugins, make_event):
    SlackNotifier(webhook_url=f"{webhook_server.url}/a").send(make_event())
    SlackNotifier(webhook_url=f"{webhook_server.url}/b", channel="#alerts").send(make_event())
    assert "channel" not in webhook_server.received[0].json
    assert webhook_server.received[1].json["channel"] == "#alerts"


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (400, "invalid_blocks", PermanentDeliveryError),
        (403, "invalid_token", PermanentDeliveryError),
        (404, "no_service", PermanentDeliveryError),
        (410, "channel_is_archived", PermanentDeliveryError),
        (408, "timeout", TransientDeliveryError),
        (500, "rollup_error", TransientDeliveryError),
        (503, "unavailable", TransientDeliveryError),
    ],
)
def test_answers_are_classified_with_slacks_words(slack, webhook_server, make_event, status, body, kind):
    webhook_server.respond(status=status, body=body)
    with pytest.raises(kind, match=f"HTTP {status}: {body}"):
        slack.deliver(slack.format(make_event()))


@pytest.mark.parametrize(
    ("header", "expected"),
    [({"Retry-After": "2"}, 2.0), ({}, None), ({"Retry-After": "soon"}, None), ({"Retry-After": "86400"}, 3600.0)],
)
def test_429_is_transient_with_the_services_wait(slack, webhook_server, make_event, header, expected):
    webhook_server.respond(status=429, body="rate_limited", headers=header)
    outcome = slack.send_with_outcome(make_event())
    assert not outcome.delivered and not outcome.permanent
    assert outcome.retry_after == expected


def test_retry_after_as_an_http_date(slack, webhook_server, make_event):
    from email.utils import formatdate

    webhook_server.respond(status=429, body="rate_limited", headers={"Retry-After": formatdate(time.time() + 30, usegmt=True)})
    outcome = slack.send_with_outcome(make_event())
    assert 25 <= outcome.retry_after <= 31


@pytest.mark.parametrize("answer", [Scripted(delay=10), Scripted(dribble=0.3)])
def test_a_server_that_stalls_cannot_hold_a_send_past_the_deadline(webhook_server, afs_plugins, make_event, answer):
    notifier = SlackNotifier(webhook_url=f"{webhook_server.url}/x", timeout=1)
    webhook_server.respond(answer)
    started = time.monotonic()
    outcome = notifier.send_with_outcome(make_event())
    elapsed = time.monotonic() - started
    assert not outcome.delivered and not outcome.permanent
    assert "deadline" in outcome.error
    assert elapsed < 2.0


def test_connection_refused_is_transient_and_names_no_secret(afs_plugins, make_event, caplog):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    notifier = SlackNotifier(webhook_url=f"http://127.0.0.1:{port}/services/{TOKEN}", timeout=1)
    with caplog.at_level(logging.DEBUG):
        outcome = notifier.send_with_outcome(make_event())
    assert not outcome.permanent and "could not connect" in outcome.error
    assert "sekr1t" not in caplog.text and "sekr1t" not in outcome.error


def test_permanent_failures_name_no_secret_in_results_or_logs(slack, webhook_server, afs_plugins, caplog):
    webhook_server.respond(status=403, body=f"invalid_token for /services/{TOKEN}")
    manager = NotificationManager(plugins=afs_plugins, background=False)
    manager.register_handler("slack", slack)
    with caplog.at_level(logging.DEBUG):
        result = manager.notify_training_failed("m", "r", "boom")
    assert result.outcomes["slack"].permanent
    assert "sekr1t" not in result.failed["slack"] and "sekr1t" not in caplog.text
    assert "invalid_token" in result.failed["slack"]


def test_hostile_text_arrives_escaped(slack, webhook_server, make_event):
    slack.send(make_event(title="<!channel> deploy", message="a & b <https://x|y> <@U123> <!subteam^S1>"))
    raw = webhook_server.received[0].body.decode()
    payload = webhook_server.received[0].json
    assert payload["blocks"][0]["text"]["text"].endswith("&lt;!channel&gt; deploy")
    assert "a &amp; b &lt;https://x|y&gt; &lt;@U123&gt; &lt;!subteam^S1&gt;" in raw
    assert "<!" not in raw and "<@" not in raw and "<https" not in raw


def test_nan_and_emoji_arrive_as_valid_json(slack, webhook_server, make_event):
    family = "🚀✅👨‍👩‍👧"
    slack.send(make_event(title=f"done {family}", metrics={"loss": float("nan"), "grad": float("inf")}))
    raw = webhook_server.received[0].body.decode("utf-8")
    json.loads(raw, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert family in raw and "*loss*\\nNaN" in raw and "*grad*\\ninf" in raw


def test_another_plugin_can_replace_slacks_rendering(slack, webhook_server, afs_plugins, make_event):
    from afs_core import hookimpl

    class PlainSlack:
        @hookimpl
        def afs_format_event(self, event, channel):
            if isinstance(channel, SlackNotifier):
                return {"text": f"plain: {event.title}"}
            return None

    afs_plugins.register(PlainSlack(), name="plain-slack")
    assert slack.send(make_event())
    assert webhook_server.received[0].json == {"text": "plain: Training completed: tiny-model"}


def test_after_a_429_nothing_is_posted_until_slack_says(webhook_server, afs_plugins, make_event):
    notifier = SlackNotifier(webhook_url=f"{webhook_server.url}/services/{TOKEN}", timeout=2)
    webhook_server.respond(status=429, body="rate_limited", headers={"Retry-After": "30"})
    assert notifier.send_batch([make_event() for _ in range(20)]) == 0
    assert len(webhook_server.received) == 1
    outcome = notifier.send_with_outcome(make_event())
    assert 28 <= outcome.retry_after <= 30 and "asked to wait" in outcome.error


def test_a_token_that_is_the_whole_path_is_still_secret(webhook_server, afs_plugins, make_event, caplog):
    relay = SlackNotifier(webhook_url=f"{webhook_server.url}/xoxb-SECRET-TOKEN")
    other = SlackNotifier(webhook_url="https://relay.example/xoxb-SECRET-TOKEN", allow_any_host=True)
    with caplog.at_level(logging.DEBUG):
        assert relay.send(make_event())
    for text in (repr(relay), relay.describe(), other.describe(), caplog.text):
        assert "SECRET" not in text


def test_a_control_character_message_makes_no_empty_section(slack, webhook_server, make_event):
    slack.send(make_event(message="\x1b\x07", error_details="\x00", context={"traceback": "\x1b"}))
    blocks = webhook_server.received[0].json["attachments"][0]["blocks"]
    assert all(block.get("text", {}).get("text", "x") for block in blocks)


def test_the_engine_retries_a_429_no_sooner_than_slack_asked(webhook_server, afs_plugins, make_event, tmp_path):
    from afs_core.delivery.retry import RetryPolicy
    from afs_core.delivery.store import Store

    manager = NotificationManager(plugins=afs_plugins, store=Store(tmp_path / "afs.db"), retry=RetryPolicy(base=0.05))
    manager.register_handler("slack", SlackNotifier(webhook_url=f"{webhook_server.url}/services/{TOKEN}", timeout=2))
    webhook_server.respond(Scripted(status=429, body="rate_limited", headers={"Retry-After": "1"}),
                           Scripted(status=500, body="rollup_error"))
    result = manager.notify_training_completed("m", "r", duration=5.0)
    assert result.wait(15) and result.delivered == ["slack"]
    first, second, third = webhook_server.received
    assert second.at - first.at >= 1.0  # Retry-After honoured, not hammered
    assert third.at - second.at < 1.0  # a 500 backs off briefly, with jitter
    manager.close(timeout=2)


def test_a_run_that_ends_after_a_500_and_a_503_still_delivers_before_it_exits(webhook_server, tmp_path):
    import os
    import subprocess
    import sys

    webhook_server.respond(Scripted(status=500, body="oops"), Scripted(status=503, body="busy"))
    script = tmp_path / "train.py"
    script.write_text(
        "from afs_core import NotificationManager\n"
        "manager = NotificationManager.from_env()\n"
        "manager.notify_training_completed('m', 'run-1', 60.0, final_loss=0.1)\n"
        "print(manager.flush(timeout=60))\n"
    )
    env = {**os.environ, "SLACK_WEBHOOK_URL": f"{webhook_server.url}/services/{TOKEN}"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr
    texts = [r.json["text"] for r in webhook_server.received]
    assert len(texts) == 3 and len(set(texts)) == 1 and texts[0].startswith("✅ Training completed: m")
