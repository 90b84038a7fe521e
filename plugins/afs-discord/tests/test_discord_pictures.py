"""The loss curve on Discord: a PNG in the embed, sent as multipart/form-data, or a line of text without matplotlib."""

import json
import math
import re
import struct

import pytest

from afs_core import EventType
from afs_core.formatting import loss_summary
from afs_core.testing import Scripted
from afs_discord import DiscordNotifier

STORED = json.dumps({"id": "1", "type": 0})
CURVE = [[float(step), 2.31 * math.exp(-step / 40) + 0.41] for step in range(0, 200, 2)]
PICTURE_EVENTS = [EventType.TRAINING_COMPLETED, EventType.TRAINING_FAILED, EventType.EVALUATION_COMPLETED,
                  EventType.LOSS_DEGRADED]


@pytest.fixture
def discord(webhook_server, afs_plugins):
    webhook_server.default = Scripted(status=200, body=STORED, headers={"Content-Type": "application/json"})
    notifier = DiscordNotifier(webhook_url=f"{webhook_server.url}/api/webhooks/42/tok", timeout=10)
    yield notifier
    notifier.close()


@pytest.fixture
def matplotlib_installed():
    """The picture tests never skip: afs-discord[test] installs afs-core[plots], so a missing
    matplotlib is a broken test environment, reported as such."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pytest.fail("matplotlib is not installed: install afs-discord[test] (it brings afs-core[plots])")


def curve_event(make_event, event_type=EventType.TRAINING_COMPLETED, **fields):
    return make_event(event_type, context={"loss_curve": CURVE, "duration": 60.0}, **fields)


def multipart(request):
    """(boundary, [(headers, body)]) of a multipart/form-data request, read strictly:
    CRLF everywhere, a closing boundary and nothing after it."""
    match = re.fullmatch(r"multipart/form-data; boundary=(afs-[0-9a-f]{32})", request.headers["Content-Type"])
    assert match, request.headers["Content-Type"]
    boundary = match[1].encode()
    body = request.body
    assert body.startswith(b"--" + boundary + b"\r\n") and body.endswith(b"\r\n--" + boundary + b"--\r\n")
    chunks = body[len(boundary) + 4: -(len(boundary) + 8)].split(b"\r\n--" + boundary + b"\r\n")
    parts = []
    for chunk in chunks:
        head, _, content = chunk.partition(b"\r\n\r\n")
        parts.append((head.decode("ascii").split("\r\n"), content))
    return boundary, parts


@pytest.mark.parametrize("event_type", PICTURE_EVENTS)
def test_the_loss_curve_goes_as_a_png_in_the_embed(discord, webhook_server, make_event, matplotlib_installed,
                                                    event_type):
    assert discord.send(curve_event(make_event, event_type))
    request = webhook_server.received[0]
    assert request.query == {"wait": ["true"]}
    _, parts = multipart(request)
    assert [headers for headers, _ in parts] == [
        ['Content-Disposition: form-data; name="payload_json"', "Content-Type: application/json"],
        ['Content-Disposition: form-data; name="files[0]"; filename="loss.png"', "Content-Type: image/png"],
    ]
    payload = json.loads(parts[0][1])
    assert set(payload) == {"embeds", "allowed_mentions", "attachments"}
    assert payload["attachments"] == [{"id": 0, "filename": "loss.png", "description": "Loss curve"}]
    assert payload["allowed_mentions"] == {"parse": []}
    (embed,) = payload["embeds"]
    assert embed["image"] == {"url": "attachment://loss.png"}
    assert "loss ▇" not in embed.get("description", "") and "loss █" not in embed.get("description", "")
    assert {"name": "Duration", "value": "1m 00s", "inline": True} in embed["fields"]
    assert all(field["name"] != "Loss curve" for field in embed["fields"])
    png = parts[1][1]
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (800, 400)


def test_the_multipart_request_exactly(discord, webhook_server, make_event, matplotlib_installed):
    import datetime as dt

    when = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.timezone.utc)
    assert discord.send(curve_event(make_event, title="Training completed: m", message="Run r finished.",
                                    run_id="r", timestamp=when))
    boundary, parts = multipart(webhook_server.received[0])
    assert len(parts) == 2 and boundary not in parts[1][1]
    assert json.loads(parts[0][1]) == {
        "embeds": [{
            "title": "✅ Training completed: m",
            "color": 0x2ECC71,
            "timestamp": "2026-11-27T12:00:00+00:00",
            "fields": [
                {"name": "Model", "value": "tiny-model", "inline": True},
                {"name": "Run", "value": "r", "inline": True},
                {"name": "Duration", "value": "1m 00s", "inline": True},
            ],
            "description": "Run r finished.",
            "footer": {"text": discord.format(curve_event(make_event, run_id="r"))["embeds"][0]["footer"]["text"]},
            "image": {"url": "attachment://loss.png"},
        }],
        "allowed_mentions": {"parse": []},
        "attachments": [{"id": 0, "filename": "loss.png", "description": "Loss curve"}],
    }
    assert parts[0][1] == json.dumps(json.loads(parts[0][1]), ensure_ascii=False).encode()  # one JSON, nothing else


def test_username_and_avatar_travel_in_payload_json(webhook_server, afs_plugins, make_event, matplotlib_installed):
    webhook_server.default = Scripted(body=STORED)
    DiscordNotifier(webhook_url=f"{webhook_server.url}/api/webhooks/1/t", username="AFS",
                    avatar_url="https://cdn.example/a.png").send(curve_event(make_event))
    payload = json.loads(multipart(webhook_server.received[0])[1][0][1])
    assert (payload["username"], payload["avatar_url"]) == ("AFS", "https://cdn.example/a.png")


def test_a_429_on_a_picture_is_retried_like_any_other_send(discord, webhook_server, make_event, matplotlib_installed):
    webhook_server.respond(status=429, body=json.dumps({"retry_after": 0.35, "global": False}))
    outcome = discord.send_with_outcome(curve_event(make_event))
    assert not outcome.delivered and not outcome.permanent and outcome.retry_after == 0.35
    assert discord.send(curve_event(make_event))
    first, second = webhook_server.received
    assert second.at - first.at >= 0.35 and multipart(second)[1][1][0][0].endswith('filename="loss.png"')


def test_a_batch_sends_a_picture_alone_and_packs_the_rest(discord, webhook_server, make_event, matplotlib_installed):
    events = [make_event(title="a"), curve_event(make_event), make_event(title="b"), make_event(title="c")]
    assert discord.send_batch(events) == 4
    kinds = [r.headers["Content-Type"].split(";")[0] for r in webhook_server.received]
    assert kinds == ["application/json", "multipart/form-data", "application/json"]
    assert len(webhook_server.received[2].json["embeds"]) == 2


def test_without_matplotlib_the_curve_is_a_line_of_text_in_json(discord, webhook_server, make_event,
                                                                 without_matplotlib):
    event = curve_event(make_event)
    assert discord.send(event)
    request = webhook_server.received[0]
    assert request.headers["Content-Type"].startswith("application/json")
    payload = request.json
    assert "attachments" not in payload and "image" not in payload["embeds"][0]
    assert payload["embeds"][0]["description"] == f"Run run-1 finished.\n{loss_summary(event)}"


def test_events_without_a_curve_are_sent_as_before(discord, webhook_server, make_event):
    assert discord.send(make_event(EventType.EPOCH_COMPLETED, context={"loss_curve": CURVE}))
    assert discord.send(make_event())
    for request in webhook_server.received:
        assert request.headers["Content-Type"].startswith("application/json")
        assert "attachments" not in request.json and "image" not in request.json["embeds"][0]
        assert "loss" not in request.json["embeds"][0]["description"]
