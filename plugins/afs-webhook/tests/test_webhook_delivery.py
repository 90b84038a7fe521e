"""WebhookNotifier against real HTTP servers on 127.0.0.1, checked as a receiver would."""

import base64
import datetime as dt
import hashlib
import hmac
import json
import socket
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from afs_core import EventType, NotificationManager, PermanentDeliveryError, send_now
from afs_core.channels.http import HttpAnswer
from afs_core.delivery.retry import RetryPolicy
from afs_core.delivery.store import Store
from afs_core.results import DeliveryStatus
from afs_core.source import Source
from afs_core.testing import Scripted, WebhookServer
from afs_webhook import WebhookNotifier


@pytest.fixture
def second_server():
    server = WebhookServer().start()
    server.default = Scripted(status=200, body="ok")
    try:
        yield server
    finally:
        server.stop()


def _event(make_event, **fields):
    fixed = dict(event_id="e" * 32, timestamp=dt.datetime(2026, 11, 27, 12, 0, 0, 250000, tzinfo=dt.timezone.utc),
                 source=Source(host="gpu-01", pid=4242, rank=3, world_size=8))
    return make_event(**{**fixed, **fields})


def _engine(afs_plugins, tmp_path, channel, *, retry=None):
    manager = NotificationManager(plugins=afs_plugins, store=Store(tmp_path / "afs.db"), settings={},
                                  retry=retry or RetryPolicy(max_attempts=4, base=0.05, cap=0.1))
    manager.register_channel("webhook", channel)
    return manager


def _ticking_clock(start=None):
    """A wall clock one second further on at every reading, from now: each attempt
    gets its own timestamp without the test sleeping."""
    now = [time.time() if start is None else start]

    def read():
        now[0] += 1.0
        return now[0]

    return read


# -- the request ------------------------------------------------------------------


def test_the_body_is_the_event_as_afs_event_1_json(hook, webhook_server, make_event, kit):
    event = _event(make_event, metrics={"loss": 0.25, "acc": float("nan")}, context={"duration": 90.0},
                   tags=["nightly"], epoch=2)
    assert send_now(hook, event).receipt == "HTTP 200: ok"
    (request,) = webhook_server.received
    assert request.path == f"/hook/{kit.PATH_TOKEN}" and request.query == {"key": [kit.QUERY_TOKEN]}
    assert request.json == {
        "schema": "afs.event/1",
        "id": "e" * 32,
        "type": "training_completed",
        "category": "training",
        "level": "success",
        "title": "Training completed: tiny-model",
        "message": "Run run-1 finished.",
        "timestamp": "2026-11-27T12:00:00.250000Z",
        "model": "tiny-model",
        "run_id": "run-1",
        "epoch": 2,
        "batch": None,
        "cost": None,
        "metrics": {"loss": 0.25, "acc": "NaN"},
        "error_details": None,
        "tags": ["nightly"],
        "context": {"duration": 90.0},
        "source": {"host": "gpu-01", "pid": 4242, "rank": 3, "world_size": 8},
        "truncated": [],
    }
    # The bytes themselves: UTF-8 JSON as json.dumps writes it, never a bare NaN.
    assert request.body == json.dumps(request.json, ensure_ascii=False, allow_nan=False).encode()


def test_the_headers_are_the_standard_webhooks_ones_signed_over_the_exact_body(hook, webhook_server, make_event, kit):
    sent_at = time.time()
    hook.clock = lambda: sent_at
    send_now(hook, _event(make_event))
    (request,) = webhook_server.received
    headers = request.headers
    timestamp = str(int(sent_at))
    signed = f"{'e' * 32}.{timestamp}.".encode() + request.body
    expected = "v1," + base64.b64encode(hmac.new(kit.KEY, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-id"] == "e" * 32
    assert headers["webhook-timestamp"] == timestamp
    assert headers["webhook-signature"] == expected
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["User-Agent"] == "afs-webhook"
    assert headers["Authorization"] == f"Bearer {kit.AUTH_TOKEN}"
    assert headers["Content-Length"] == str(len(request.body))
    assert {name.lower() for name in headers} == {
        "host", "user-agent", "accept-encoding", "content-type", "content-length",
        "authorization", "webhook-id", "webhook-timestamp", "webhook-signature"}


def test_standardwebhooks_verifies_a_real_request_and_rejects_a_tampered_one(hook, webhook_server, make_event, kit):
    send_now(hook, _event(make_event, title="Ünïcode 🚀 title"))
    (request,) = webhook_server.received
    receiver = Webhook(kit.SECRET)
    assert receiver.verify(request.body, request.headers)["title"] == "Ünïcode 🚀 title"
    tampered = request.body.replace(b"tiny-model", b"tiny-modem")
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        receiver.verify(tampered, request.headers)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        receiver.verify(request.body, {**request.headers, "webhook-id": "f" * 32})
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook("whsec_" + base64.b64encode(b"another key, 24 bytes..").decode()).verify(request.body, request.headers)


def test_a_request_signed_long_ago_is_rejected_as_stale_by_standardwebhooks(hook, webhook_server, make_event, kit):
    hook.clock = lambda: time.time() - 600
    send_now(hook, _event(make_event))
    (request,) = webhook_server.received
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(kit.SECRET).verify(request.body, request.headers)


def test_hostile_text_arrives_intact_as_data(hook, webhook_server, make_event, kit):
    title = "{{ config }} ${jndi:ldap://x} \u202eevil\u202c \x1b[2J\x07 <b>&amp;</b>"
    message = "line1\r\nInjected-Header: x\n\x00\x7f" + "🚀✅👨‍👩‍👧" + "%s %(x)s {0}"
    send_now(hook, _event(make_event, title=title, message=message, context={"nested": {"k": ["${x}", "{{y}}"]}}))
    (request,) = webhook_server.received
    body = Webhook(kit.SECRET).verify(request.body, request.headers)
    assert body["title"] == title and body["message"] == message
    assert body["context"] == {"nested": {"k": ["${x}", "{{y}}"]}}
    assert b"\\u001b[2J\\u0007" in request.body and b"\\r\\nInjected-Header" in request.body
    assert "Injected-Header" not in request.headers


def test_a_100_kb_message_is_cut_to_64_kib_and_says_so(hook, webhook_server, make_event, kit):
    send_now(hook, _event(make_event, message="é" * 50_000))  # 100,000 bytes of UTF-8
    (request,) = webhook_server.received
    body = Webhook(kit.SECRET).verify(request.body, request.headers)
    assert len(body["message"].encode()) <= 64 * 1024 and body["message"].endswith("…")
    assert body["message"] == "é" * ((64 * 1024 - 3) // 2) + "…"
    assert body["truncated"] == ["/message"]


# -- answers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "permanent", "error", "retry_after"),
    [
        (Scripted(status=500, body="boom"), False, "HTTP 500: boom", None),
        (Scripted(status=502, body=""), False, "HTTP 502: no body", None),
        (Scripted(status=503, body="down", headers={"Retry-After": "7"}), False, "HTTP 503: down", 7.0),
        (Scripted(status=408, body="slow"), False, "HTTP 408: slow", None),
        (Scripted(status=429, body="slow down", headers={"Retry-After": "2"}), False, "HTTP 429: rate limited", 2.0),
        (Scripted(status=400, body='{"error": "bad schema"}'), True, 'HTTP 400: {"error": "bad schema"}', None),
        (Scripted(status=401, body="who are you"), True, "HTTP 401: who are you", None),
        (Scripted(status=404, body="no\nsuch\x1b[31m hook"), True, "HTTP 404: no such[31m hook", None),
        (Scripted(status=410, body="gone"), True, "HTTP 410: gone", None),
    ],
)
def test_answers_are_classified(hook, webhook_server, make_event, answer, permanent, error, retry_after):
    webhook_server.respond(answer)
    outcome = send_now(hook, make_event())
    assert outcome.status is DeliveryStatus.FAILED
    assert (outcome.permanent, outcome.error, outcome.retry_after) == (permanent, error, retry_after)


def test_every_2xx_is_delivered(hook, webhook_server, make_event):
    webhook_server.respond(Scripted(status=202, body="queued"), Scripted(status=204, body=""))
    assert send_now(hook, make_event()).receipt == "HTTP 202: queued"
    assert send_now(hook, make_event()).receipt == "HTTP 204: no body"


def test_a_refusal_quotes_the_first_200_characters_of_the_body(hook, webhook_server, make_event):
    webhook_server.respond(status=422, body="a" * 150 + "b" * 100)
    outcome = send_now(hook, make_event())
    assert outcome.permanent and outcome.error == "HTTP 422: " + "a" * 150 + "b" * 50 + "…"


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_not_followed_and_fails_for_good_saying_so(hook, webhook_server, make_event, status, kit):
    webhook_server.respond(status=status, body="", headers={"Location": f"https://elsewhere.example/in/{kit.PATH_TOKEN}"})
    outcome = send_now(hook, make_event())
    assert outcome.permanent
    assert outcome.error.startswith(f"HTTP {status}: a redirect to https://elsewhere.example, not followed")
    assert len(webhook_server.received) == 1
    kit.assert_no_secret(outcome.error)


def test_a_redirect_to_an_unreadable_location_fails_that_url_alone(webhook_server, second_server, afs_plugins,
                                                                     make_event, kit):
    """``Location: http://[oops/`` is no URL: a permanent error for that URL, and the
    event's other URLs still get it."""
    channel = WebhookNotifier([kit.url_of(webhook_server), kit.url_of(second_server, "other")], kit.SECRET, timeout=3)
    webhook_server.default = Scripted(status=307, headers={"Location": "http://[oops/"})
    outcome = send_now(channel, make_event())
    assert outcome.permanent
    assert outcome.error.startswith(f"{webhook_server.url}/…: HTTP 307: a redirect to an unreadable location, "
                                    "not followed")
    assert outcome.error.endswith("(sent to 1 of 2)")
    assert len(webhook_server.received) == 1 and len(second_server.received) == 1
    kit.assert_no_secret(outcome.error)


@pytest.mark.parametrize("location", ["http://[oops/", "https://host:99999/x", "http://[::1/in"])
def test_read_answer_names_an_unreadable_location_as_such(hook, location):
    with pytest.raises(PermanentDeliveryError, match=r"^HTTP 307: a redirect to an unreadable location, not followed"):
        hook.read_answer(HttpAnswer(307, {"Location": location}, ""))


def test_a_token_in_a_middle_path_segment_echoed_by_the_receiver_is_masked(webhook_server, afs_plugins,
                                                                            make_event, kit):
    channel = WebhookNotifier(f"{webhook_server.url}/hooks/{kit.PATH_TOKEN}/events?key={kit.QUERY_TOKEN}",
                              kit.SECRET, timeout=3)
    webhook_server.respond(status=404, body=f'{{"error": "no such hook {kit.PATH_TOKEN}"}}')
    outcome = send_now(channel, make_event())
    assert outcome.permanent and outcome.error == 'HTTP 404: {"error": "no such hook ***"}'
    assert webhook_server.received[0].path == f"/hooks/{kit.PATH_TOKEN}/events"


def test_a_secret_echoed_across_the_quotes_cut_is_masked_before_the_cut(webhook_server, afs_plugins, make_event, kit):
    """Cut first, a long bearer token would be split at the 200th character and its start shown."""
    token = "tk_" + "S3CRETbearerTOKEN" * 3
    channel = WebhookNotifier(kit.url_of(webhook_server), kit.SECRET, headers={"Authorization": f"Bearer {token}"},
                              timeout=3)
    webhook_server.respond(status=401, body="invalid credentials: " + "." * 150 + f"Bearer {token}")
    with pytest.raises(PermanentDeliveryError) as caught:  # as the channel raises it, before the core sees it
        channel.deliver(channel.format(make_event()))
    assert caught.value.reason.endswith("." * 150 + "***")
    assert token[:6] not in caught.value.reason
    webhook_server.respond(status=401, body="invalid credentials: " + "." * 150 + f"Bearer {token}")
    outcome = send_now(channel, make_event())
    assert outcome.error == "HTTP 401: invalid credentials: " + "." * 150 + "***"


def test_a_huge_body_of_long_echoed_secrets_shows_no_part_of_one(afs_plugins, kit):
    """Only the start of a big body is masked and quoted, unless masking shrinks it so far
    that a secret cut at its end could reach the quote."""
    token = "k3y" * 700  # a 2,100-character header value
    channel = WebhookNotifier("https://hooks.example.com/in", kit.SECRET, headers={"X-Key": token})
    said = channel.words(HttpAnswer(400, {}, token * 40))  # 84,000 characters, all secret
    assert said == "***" * 40
    said = channel.words(HttpAnswer(400, {}, "x" * 70_000 + token))
    assert said == "x" * 200 + "…"


def test_a_refused_connection_is_retried(afs_plugins, make_event, kit):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    channel = WebhookNotifier(f"http://127.0.0.1:{port}/hook/{kit.PATH_TOKEN}", kit.SECRET, timeout=2)
    outcome = send_now(channel, make_event())
    assert not outcome.permanent and outcome.error.startswith("connection failed: could not connect")
    kit.assert_no_secret(outcome.error)


def test_a_stalled_receiver_cannot_hold_a_send_past_the_deadline(webhook_server, afs_plugins, make_event, kit):
    channel = WebhookNotifier(kit.url_of(webhook_server), kit.SECRET, timeout=0.5)
    webhook_server.respond(Scripted(delay=10))
    started = time.monotonic()
    outcome = send_now(channel, make_event())
    assert "deadline" in outcome.error and not outcome.permanent and time.monotonic() - started < 2


# -- retries through the engine ---------------------------------------------------


def test_a_retry_keeps_the_webhook_id_and_is_signed_afresh(hook, webhook_server, afs_plugins, tmp_path, kit):
    webhook_server.respond(status=500, body="try later")
    hook.clock = _ticking_clock()
    manager = _engine(afs_plugins, tmp_path, hook)
    try:
        result = manager.notify_training_failed("m", "run-9", RuntimeError("boom"))
        assert manager.flush(timeout=20) is True
    finally:
        manager.close(timeout=5)
    assert result.delivered == ["webhook"]
    first, second = webhook_server.received
    assert first.body == second.body
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == result.event.event_id
    assert int(second.headers["webhook-timestamp"]) > int(first.headers["webhook-timestamp"])
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]
    receiver = Webhook(kit.SECRET)
    assert receiver.verify(first.body, first.headers)["id"] == receiver.verify(second.body, second.headers)["id"]


def test_with_two_urls_a_retry_goes_only_to_the_one_that_failed(webhook_server, second_server, afs_plugins,
                                                                  make_event, kit):
    channel = WebhookNotifier(f"{kit.url_of(webhook_server)},{kit.url_of(second_server, 'other')}", kit.SECRET,
                              timeout=3)
    channel.clock = _ticking_clock()
    webhook_server.default = Scripted(status=200, body="ok")
    second_server.respond(status=503, body="busy", headers={"Retry-After": "3"})
    event = make_event()
    first = send_now(channel, event)
    assert not first.permanent and first.retry_after == 3.0
    assert first.error == f"{second_server.url}/…: HTTP 503: busy (sent to 1 of 2)"
    second = send_now(channel, event)
    assert second.delivered and second.receipt == {f"{second_server.url}/…": "HTTP 200: ok"}
    assert len(webhook_server.received) == 1 and len(second_server.received) == 2
    requests = [*webhook_server.received, *second_server.received]
    assert {r.headers["webhook-id"] for r in requests} == {event.event_id}
    for request in requests:
        Webhook(kit.SECRET).verify(request.body, request.headers)
    assert second_server.received[0].headers["webhook-timestamp"] != second_server.received[1].headers["webhook-timestamp"]


def test_with_two_urls_the_engine_retries_only_the_failing_one(webhook_server, second_server, afs_plugins,
                                                                tmp_path, kit):
    channel = WebhookNotifier([kit.url_of(webhook_server), kit.url_of(second_server, "other")], kit.SECRET, timeout=3)
    second_server.respond(Scripted(status=500, body="flaky"), Scripted(status=502, body="flaky"))
    manager = _engine(afs_plugins, tmp_path, channel)
    try:
        result = manager.notify("Loss improved", "0.2", event_type=EventType.LOSS_IMPROVED)
        assert manager.flush(timeout=20) is True
    finally:
        manager.close(timeout=5)
    assert result.delivered == ["webhook"]
    assert len(webhook_server.received) == 1 and len(second_server.received) == 3
    assert {r.headers["webhook-id"] for r in [*webhook_server.received, *second_server.received]} == {
        result.event.event_id}


def test_a_429_holds_back_only_the_url_that_sent_it(webhook_server, second_server, afs_plugins, make_event, kit):
    channel = WebhookNotifier([kit.url_of(webhook_server), kit.url_of(second_server, "other")], kit.SECRET, timeout=3)
    webhook_server.respond(status=429, body="", headers={"Retry-After": "30"})
    first = send_now(channel, make_event())
    assert first.retry_after == 30.0 and len(second_server.received) == 1
    started = time.monotonic()
    again = send_now(channel, make_event())  # another event: the held URL is not called, the other is
    assert time.monotonic() - started < 1
    assert len(webhook_server.received) == 1 and len(second_server.received) == 2
    assert not again.permanent and 29 <= again.retry_after <= 30


def test_a_url_that_refuses_for_good_is_named_and_the_others_still_get_the_event(
        webhook_server, second_server, afs_plugins, make_event, kit):
    channel = WebhookNotifier([kit.url_of(webhook_server), kit.url_of(second_server, "other")], kit.SECRET, timeout=3)
    webhook_server.respond(status=404, body="no such hook")
    outcome = send_now(channel, make_event())
    assert outcome.permanent and outcome.error == f"{webhook_server.url}/…: HTTP 404: no such hook (sent to 1 of 2)"
    assert len(second_server.received) == 1
