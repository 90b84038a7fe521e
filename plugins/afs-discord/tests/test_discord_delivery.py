"""DiscordNotifier against a real HTTP server on 127.0.0.1 with scripted answers."""

import json
import logging
import re
import time
from pathlib import Path

import pytest

from afs_core import EventType, NotificationManager, PermanentDeliveryError, TransientDeliveryError
from afs_core.channels import HOLDS
from afs_core.testing import Scripted, assert_matches_snapshot, sample_events
from afs_discord import DiscordNotifier
from afs_discord.embeds import embed_size

TOKEN = "sekr1t-T0KEN_part"
STORED = json.dumps({"id": "1", "type": 0})


@pytest.fixture
def discord(webhook_server, afs_plugins):
    webhook_server.default = Scripted(status=200, body=STORED, headers={"Content-Type": "application/json"})
    notifier = DiscordNotifier(webhook_url=f"{webhook_server.url}/api/webhooks/42/{TOKEN}", timeout=3)
    yield notifier
    notifier.close()


def test_delivers_one_embed_with_wait_true(discord, webhook_server, make_event):
    assert discord.send(make_event(metrics={"accuracy": 0.954321}, context={"duration": 3600.0}))
    request = webhook_server.received[0]
    assert request.path == f"/api/webhooks/42/{TOKEN}" and request.query == {"wait": ["true"]}
    payload = request.json
    assert payload["allowed_mentions"] == {"parse": []}
    embed = payload["embeds"][0]
    assert embed["title"] == "✅ Training completed: tiny-model" and embed["color"] == 0x2ECC71
    assert {"name": "accuracy", "value": "0.9543", "inline": True} in embed["fields"]
    assert {"name": "Duration", "value": "1h 00m", "inline": True} in embed["fields"]
    assert embed["footer"]["text"].endswith("run run-1") and embed["timestamp"].endswith("+00:00")


def test_username_and_avatar_when_configured(webhook_server, afs_plugins, make_event):
    webhook_server.default = Scripted(body=STORED)
    DiscordNotifier(webhook_url=f"{webhook_server.url}/api/webhooks/1/t", username="AFS",
                    avatar_url="https://cdn.example/a.png").send(make_event())
    assert webhook_server.received[0].json["username"] == "AFS"
    assert webhook_server.received[0].json["avatar_url"] == "https://cdn.example/a.png"


def test_mentions_ping_nobody_even_with_a_custom_formatter(discord, webhook_server, afs_plugins, make_event):
    from afs_core import hookimpl

    discord.send(make_event(title="@everyone @here <@&1> <@2>"))

    class Custom:
        @hookimpl
        def afs_format_event(self, event, channel):
            return {"content": f"{event.title} @everyone"}

    afs_plugins.register(Custom(), name="custom")
    discord.send(make_event(title="<@2>"))
    assert [r.json["allowed_mentions"] for r in webhook_server.received] == [{"parse": []}, {"parse": []}]
    assert webhook_server.received[1].json["content"] == "<@2> @everyone"


def test_oversized_payloads_are_brought_within_every_limit(discord, webhook_server):
    fields = [{"name": f"f{i}", "value": "v" * 300} for i in range(26)]
    embeds = [{"title": "t" * 300, "description": "d" * 5000, "fields": fields} for _ in range(11)]
    discord.deliver({"content": "c" * 2500, "embeds": embeds})
    payload = webhook_server.received[0].json
    assert len(payload["content"]) == 2000 and payload["content"].endswith("…")
    assert len(payload["embeds"]) <= 10
    assert sum(embed_size(e) for e in payload["embeds"]) <= 6000
    for embed in payload["embeds"]:
        assert len(embed["title"]) <= 256 and len(embed.get("description", "")) <= 4096
        assert len(embed.get("fields", [])) <= 25


def test_6001_characters_across_embeds_are_cut_to_6000(discord, webhook_server):
    embeds = [{"title": "t", "description": "d" * 2999}, {"title": "t", "description": "d" * 3000}]
    discord.deliver({"embeds": embeds})
    assert sum(embed_size(e) for e in webhook_server.received[0].json["embeds"]) == 6000


@pytest.mark.parametrize(
    ("status", "body", "kind", "words"),
    [
        (404, {"message": "Unknown Webhook", "code": 10015}, PermanentDeliveryError, "Unknown Webhook"),
        (401, {"message": "401: Unauthorized", "code": 0}, PermanentDeliveryError, "401: Unauthorized"),
        (403, {"message": "Missing Access", "code": 50001}, PermanentDeliveryError, "Missing Access (code 50001)"),
        (400, {"message": "Invalid Form Body", "code": 50035}, PermanentDeliveryError, "Invalid Form Body"),
        (500, {"message": "Internal Server Error"}, TransientDeliveryError, "HTTP 500"),
        (502, None, TransientDeliveryError, "HTTP 502"),
    ],
)
def test_answers_are_classified(discord, webhook_server, make_event, status, body, kind, words):
    webhook_server.respond(status=status, body=json.dumps(body) if body else "Bad Gateway")
    with pytest.raises(kind, match=re.escape(words)):
        discord.deliver(discord.format(make_event()))


def test_429_is_transient_with_the_bodys_fractional_wait(discord, webhook_server, make_event):
    webhook_server.respond(status=429, body=json.dumps({"retry_after": 0.35, "global": False}),
                           headers={"Retry-After": "1"})
    outcome = discord.send_with_outcome(make_event())
    assert not outcome.permanent and outcome.retry_after == 0.35


def test_a_global_429_pauses_every_discord_channel(discord, webhook_server, afs_plugins, make_event):
    other = DiscordNotifier(webhook_url=f"{webhook_server.url}/api/webhooks/43/other", timeout=3)
    webhook_server.respond(status=429, body=json.dumps({"retry_after": 0.35, "global": True}))
    assert not discord.send(make_event())
    assert other.send(make_event())
    first, second = webhook_server.received
    assert second.path.startswith("/api/webhooks/43/")
    assert second.at - first.at >= 0.35


def test_an_exhausted_bucket_is_waited_for_not_hammered(discord, webhook_server, make_event):
    webhook_server.respond(status=200, body=STORED,
                           headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "0.4"})
    assert discord.send(make_event()) and discord.send(make_event())
    first, second = webhook_server.received
    assert second.at - first.at >= 0.4


def test_a_wait_longer_than_the_deadline_is_reported_not_slept(discord, webhook_server, make_event):
    webhook_server.respond(status=200, body=STORED,
                           headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "60"})
    discord.send(make_event())
    started = time.monotonic()
    outcome = discord.send_with_outcome(make_event())
    assert time.monotonic() - started < 1
    assert not outcome.delivered and 59 <= outcome.retry_after <= 60
    assert len(webhook_server.received) == 1


@pytest.mark.parametrize("answer", [Scripted(delay=10), Scripted(dribble=0.3)])
def test_a_stalled_server_cannot_hold_a_send_past_the_deadline(webhook_server, afs_plugins, make_event, answer):
    notifier = DiscordNotifier(webhook_url=f"{webhook_server.url}/api/webhooks/1/t", timeout=1)
    webhook_server.respond(answer)
    started = time.monotonic()
    outcome = notifier.send_with_outcome(make_event())
    assert "deadline" in outcome.error and time.monotonic() - started < 2


def test_send_batch_packs_ten_embeds_a_request(discord, webhook_server, make_event):
    events = [make_event(title=f"event {i}") for i in range(23)]
    assert discord.send_batch(events) == 23
    assert [len(r.json["embeds"]) for r in webhook_server.received] == [10, 10, 3]
    assert len({r.client_port for r in webhook_server.received}) == 1


def test_the_engine_packs_a_burst_ten_embeds_a_request(discord, webhook_server, afs_plugins, make_event, tmp_path):
    from afs_core.delivery.store import Store

    store = Store(tmp_path / "afs.db")
    for i in range(23):  # a burst already waiting when the worker starts
        store.enqueue(make_event(title=f"event {i}"), ["discord"])
    manager = NotificationManager(plugins=afs_plugins, store=store)
    manager.register_handler("discord", discord)
    try:
        assert manager.flush(timeout=30) is True
    finally:
        manager.close(timeout=5)
    assert [len(r.json["embeds"]) for r in webhook_server.received] == [10, 10, 3]
    titles = [e["title"] for r in webhook_server.received for e in r.json["embeds"]]
    assert titles == [f"✅ event {i}" for i in range(23)]


def test_a_plugin_that_wraps_delivery_sees_every_message_alone(discord, webhook_server, afs_plugins, make_event):
    from afs_core import hookimpl

    seen = []

    class Watcher:
        @hookimpl(wrapper=True)
        def afs_deliver(self, message, channel, event):
            seen.append(event.title)
            return (yield)

    afs_plugins.register(Watcher(), name="watcher")
    assert discord.send_batch([make_event(title=f"event {i}") for i in range(3)]) == 3
    assert seen == ["event 0", "event 1", "event 2"] and len(webhook_server.received) == 3


def test_send_batch_keeps_each_request_within_6000_characters(discord, webhook_server, make_event):
    events = [make_event(message="m" * 2500) for _ in range(5)]
    assert discord.send_batch(events) == 5
    sizes = [sum(embed_size(e) for e in r.json["embeds"]) for r in webhook_server.received]
    assert all(size <= 6000 for size in sizes) and len(sizes) == 3


def test_send_batch_counts_only_what_was_delivered(discord, webhook_server, make_event):
    webhook_server.respond(Scripted(status=200, body=STORED), Scripted(status=400, body='{"message": "bad", "code": 50035}'))
    assert discord.send_batch([make_event() for _ in range(15)]) == 10


def test_failures_name_no_secret(discord, webhook_server, afs_plugins, caplog):
    webhook_server.respond(status=401, body=json.dumps({"message": f"bad token {TOKEN}"}))
    manager = NotificationManager(plugins=afs_plugins, background=False)
    manager.register_handler("discord", discord)
    with caplog.at_level(logging.DEBUG):
        result = manager.notify("t", "m")
    assert TOKEN not in result.failed["discord"] and TOKEN not in caplog.text


def test_markdown_in_user_text_is_shown_literally(discord, webhook_server, make_event):
    discord.send(make_event(message="# Big\n**bold** [click](https://evil.example) ||x||",
                            model_name="Qwen2.5-Coder-7B"))
    embed = webhook_server.received[0].json["embeds"][0]
    assert embed["description"] == "\\# Big\n\\*\\*bold\\*\\* \\[click\\](https://evil.example) \\|\\|x\\|\\|"
    assert {"name": "Model", "value": "Qwen2.5-Coder-7B", "inline": True} in embed["fields"]


def test_nan_emoji_and_traceback(discord, webhook_server, make_event):
    family = "🚀✅👨‍👩‍👧"
    discord.send(make_event(EventType.TRAINING_FAILED, f"failed {family}", "boom",
                            metrics={"loss": float("nan")}, context={"traceback": "Traceback\n```\nValueError: x"}))
    raw = webhook_server.received[0].body.decode("utf-8")
    json.loads(raw, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    embed = json.loads(raw)["embeds"][0]
    assert family in embed["title"]
    assert {"name": "loss", "value": "NaN", "inline": True} in embed["fields"]
    assert embed["description"].endswith("ValueError: x\n```") and embed["description"].count("```") == 2


@pytest.mark.parametrize("name", sorted(sample_events()))
def test_payload_snapshot(discord, name):
    payload = discord.format(sample_events()[name])
    embed = payload["embeds"][0]
    assert embed_size(embed) <= 6000 and len(embed["fields"]) <= 25
    assert_matches_snapshot(payload, Path(__file__).parent / "snapshots" / f"{name}.json")


def test_a_lone_surrogate_or_escape_in_the_title_does_not_lose_the_event(discord, webhook_server, make_event):
    assert discord.send(make_event(title="a\x1b[2J\x07b \ud800 c"))
    assert webhook_server.received[0].json["embeds"][0]["title"] == "✅ a[2Jb  c"


def test_footers_and_authors_count_towards_6000_too(discord, webhook_server):
    big = {"title": "t" * 256, "description": "d" * 4096, "footer": {"text": "f" * 2048}, "author": {"name": "a" * 256}}
    discord.deliver({"embeds": [dict(big), dict(big), dict(big)]})
    embeds = webhook_server.received[0].json["embeds"]
    assert sum(embed_size(e) for e in embeds) <= 6000


def test_a_cut_description_never_leaves_a_code_block_open(discord, webhook_server):
    description = "m\n```\nTraceback\n# PWNED\n[click](https://evil.example)\n" + "frame\n" * 900 + "```"
    discord.deliver({"embeds": [{"title": "t", "description": description, "fields": [{"name": "n", "value": "v" * 1000}] * 5}]})
    embed = webhook_server.received[0].json["embeds"][0]
    assert embed_size(embed) <= 6000 and embed["description"].count("```") % 2 == 0


def test_threads_sharing_a_webhook_cannot_all_take_its_last_slot(webhook_server, afs_plugins, make_event):
    import threading

    notifier = DiscordNotifier(webhook_url=f"{webhook_server.url}/api/webhooks/7/t", timeout=5)
    HOLDS.limit(notifier._bucket, 1, 0.5)
    webhook_server.default = Scripted(body=STORED, headers={"X-RateLimit-Remaining": "1", "X-RateLimit-Reset-After": "0.5"})
    threads = [threading.Thread(target=notifier.send, args=(make_event(),)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    arrivals = sorted(r.at for r in webhook_server.received)
    assert len(arrivals) == 3 and arrivals[1] - arrivals[0] >= 0.3


def test_a_plain_429_is_remembered_for_that_webhook(discord, webhook_server, make_event):
    webhook_server.respond(status=429, body=json.dumps({"retry_after": 0.4, "global": False}))
    assert not discord.send(make_event())
    assert discord.send(make_event())
    first, second = webhook_server.received
    assert second.at - first.at >= 0.4


def test_a_zero_retry_after_in_the_body_is_zero(discord, webhook_server, make_event):
    webhook_server.respond(status=429, body=json.dumps({"retry_after": 0, "global": False}), headers={"Retry-After": "7"})
    assert discord.send_with_outcome(make_event()).retry_after == 0.0


def test_an_unknown_webhook_is_not_called_again(discord, webhook_server, make_event):
    webhook_server.respond(status=404, body=json.dumps({"message": "Unknown Webhook", "code": 10015}))
    assert not discord.send(make_event())
    outcome = discord.send_with_outcome(make_event())
    assert outcome.permanent and "Unknown Webhook" in outcome.error
    assert len(webhook_server.received) == 1


def test_a_relay_path_is_secret_all_the_way(webhook_server, afs_plugins, make_event, caplog):
    relay = DiscordNotifier(webhook_url="https://relay.example/hook-SECRET", allow_any_host=True)
    assert "SECRET" not in relay.describe() and "SECRET" not in repr(relay)
    assert "hook-SECRET" in list(relay.secrets())


def test_send_batch_survives_a_formatter_that_returns_odd_things(discord, webhook_server, afs_plugins, make_event):
    from afs_core import hookimpl

    class Odd:
        @hookimpl
        def afs_format_event(self, event, channel):
            return {"embeds": "not a list"} if event.title == "odd" else None

    afs_plugins.register(Odd(), name="odd")
    assert discord.send_batch([make_event(title="odd"), make_event(), make_event()]) == 3


def test_a_global_429_at_the_end_of_a_run_is_waited_out_before_it_exits(webhook_server, tmp_path):
    import os
    import subprocess
    import sys

    webhook_server.default = Scripted(status=200, body=STORED, headers={"Content-Type": "application/json"})
    webhook_server.respond(status=429, body=json.dumps({"retry_after": 0.4, "global": True}),
                           headers={"Content-Type": "application/json", "X-RateLimit-Global": "true"})
    script = tmp_path / "train.py"
    script.write_text(
        "from afs_core import NotificationManager\n"
        "manager = NotificationManager.from_env()\n"
        "manager.notify_training_completed('m', 'run-1', 60.0)\n"
        "print(manager.flush(timeout=30))\n"
    )
    env = {**os.environ, "DISCORD_WEBHOOK_URL": f"{webhook_server.url}/api/webhooks/42/{TOKEN}"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr
    first, second = webhook_server.received
    assert first.json == second.json and second.at - first.at >= 0.4


def test_a_batch_to_a_slow_discord_stops_within_its_three_timeouts(webhook_server, afs_plugins, make_event,
                                                                     tmp_path):
    """A claim's lease is made for three of the channel's timeouts: a batch of requests
    answered slowly sends none that could end after them; the engine sends those next,
    each once, counting no attempt."""
    from afs_core.delivery.store import Store
    from afs_core.errors import NotSent

    webhook_server.default = Scripted(status=200, body=STORED, headers={"Content-Type": "application/json"},
                                      delay=0.3)
    notifier = DiscordNotifier(webhook_url=f"{webhook_server.url}/api/webhooks/42/{TOKEN}", timeout=0.5)
    alone = [{"content": f"message {n}"} for n in range(8)]  # text: each its own request
    began = time.monotonic()
    try:
        results = notifier.deliver_batch(alone)
    finally:
        notifier.close()
    assert time.monotonic() - began < 2.0  # three timeouts are 1.5 s; ten requests would be 2.4 s
    sent = [result for result in results if not isinstance(result, NotSent)]
    assert 1 <= len(sent) < 8 and all(isinstance(result, NotSent) for result in results[len(sent):])
    assert [request.json["content"] for request in webhook_server.received] == [m["content"] for m in alone[:len(sent)]]

    webhook_server.received.clear()
    manager = NotificationManager(plugins=afs_plugins, store=Store(tmp_path / "afs.db"))
    manager.register_handler("discord", DiscordNotifier(webhook_url=f"{webhook_server.url}/api/webhooks/42/{TOKEN}",
                                                        timeout=0.5, username="bot"))
    events = [make_event(title=f"event {n}", run_id=f"run-{n}") for n in range(40)]
    try:
        for event in events:
            manager.send_event(event)
        assert manager.flush(timeout=60)
    finally:
        manager.close(timeout=5)
    titles = [embed["title"] for request in webhook_server.received for embed in request.json["embeds"]]
    assert titles == [f"✅ event {n}" for n in range(40)]  # each once, in order
