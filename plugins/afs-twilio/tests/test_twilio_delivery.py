"""TwilioNotifier against Twilio's API played by a real HTTP server on 127.0.0.1."""

import logging
import time

import pytest
from twilio_api import (
    ALICE,
    BOB,
    CREDENTIALS,
    KEY_SECRET,
    KEY_SID,
    PATH,
    SENDER,
    SERVICE_SID,
    SID,
    TOKEN,
    assert_no_secret,
    basic_auth,
    created,
    form,
    recipients,
    refused,
)

from afs_core import EventType, NotificationManager, hookimpl, send_now
from afs_core.delivery.retry import RetryPolicy
from afs_core.delivery.store import Store
from afs_core.errors import DeliveryError
from afs_core.results import DeliveryStatus
from afs_core.testing import Scripted
from afs_twilio.sms import measure

HAN = "模"


def failed(make_event, **fields):
    """A failed run, as the builders make it; any field overridden."""
    fields = {"title": "Training failed: llama", "message": "Run r1 failed: boom", "model_name": "llama",
              "run_id": "r1", "error_details": "RuntimeError: boom", **fields}
    return make_event(EventType.TRAINING_FAILED, **fields)


def engine(afs_plugins, tmp_path, channel, env=None):
    """A background manager on a store in ``tmp_path``, retrying fast."""
    manager = NotificationManager(plugins=afs_plugins, store=Store(tmp_path / "afs.db"), settings=env or {},
                                  retry=RetryPolicy(max_attempts=4, base=0.05, cap=0.1))
    manager.register_channel("twilio", channel)
    return manager


class PlainText:
    """A formatter plugin that hands the channel raw text, to test its limits end to end."""

    def __init__(self, text):
        self.text = text

    @hookimpl
    def afs_format_event(self, event, channel):
        return self.text


# -- the request ---------------------------------------------------------------------------


def test_one_form_post_with_basic_auth_and_the_message_sid_as_receipt(twilio, webhook_server, make_event):
    outcome = send_now(twilio, failed(make_event))
    assert outcome.delivered and outcome.receipt == {"+44…1234": "SM" + "a" * 32}
    (request,) = webhook_server.received
    assert request.method == "POST" and request.path == PATH and request.query == {}
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["User-Agent"] == "afs-twilio"
    assert basic_auth(request) == f"{SID}:{TOKEN}"
    assert form(request) == {"To": ALICE, "From": SENDER,
                             "Body": "[AFS] ERROR Training failed: llama (r1) - RuntimeError: boom"}
    assert request.body.startswith(b"To=%2B447700901234&From=%2B15005550006&Body=%5BAFS%5D+ERROR+Training")


def test_an_api_key_authenticates_instead_of_the_token(make_twilio, webhook_server, make_event):
    channel = make_twilio(auth_token=None, api_key_sid=KEY_SID, api_key_secret=KEY_SECRET)
    assert send_now(channel, failed(make_event)).delivered
    assert basic_auth(webhook_server.received[0]) == f"{KEY_SID}:{KEY_SECRET}"
    assert webhook_server.received[0].path == PATH  # the account's URL, whoever signs


def test_a_messaging_service_is_sent_alone_or_with_the_sender(make_twilio, webhook_server, make_event):
    send_now(make_twilio(from_number=None, messaging_service_sid=SERVICE_SID), failed(make_event))
    send_now(make_twilio(messaging_service_sid=SERVICE_SID), failed(make_event))
    first, second = (form(r) for r in webhook_server.received)
    assert set(first) == {"To", "MessagingServiceSid", "Body"} and first["MessagingServiceSid"] == SERVICE_SID
    assert set(second) == {"To", "From", "MessagingServiceSid", "Body"}


def test_every_number_is_texted_once_over_one_connection(make_twilio, webhook_server, make_event):
    channel = make_twilio(to=[ALICE, BOB])
    webhook_server.respond(created("SM1", ALICE), created("SM2", BOB))
    outcome = send_now(channel, failed(make_event))
    assert outcome.delivered and outcome.receipt == {"+44…1234": "SM1", "+15…0987": "SM2"}
    assert recipients(webhook_server) == [ALICE, BOB]
    assert len({r.client_port for r in webhook_server.received}) == 1
    assert channel.memory.get(f"fanout:{failed(make_event).event_id}") is None  # nothing kept once all have it


# -- the text: limits at and just over each boundary --------------------------------------


@pytest.mark.parametrize(
    ("text", "budget", "sent"),
    [
        ("a" * 160, 1, "a" * 160),
        ("a" * 161, 1, "a" * 157 + "..."),
        ("a" * 306, 2, "a" * 306),
        ("a" * 307, 2, "a" * 303 + "..."),
        ("€" * 80, 1, "€" * 80),
        ("€" * 81, 1, "€" * 78 + "..."),
        ("a" * 305 + "[", 2, "a" * 303 + "..."),  # 307 septets: the bracket counts two
        (HAN * 70, 1, HAN * 70),
        (HAN * 71, 1, HAN * 69 + "…"),
        (HAN * 134, 2, HAN * 134),
        (HAN * 135, 2, HAN * 133 + "…"),
    ],
)
def test_the_body_is_kept_within_the_segment_budget(make_twilio, webhook_server, afs_plugins, make_event,
                                                    text, budget, sent):
    afs_plugins.register(PlainText(text), name="plain")
    assert send_now(make_twilio(max_segments=budget), failed(make_event)).delivered
    body = form(webhook_server.received[0])["Body"]
    assert body == sent and measure(body).segments <= budget


def test_emoji_are_dropped_so_the_text_stays_gsm7(twilio, webhook_server, make_event):
    send_now(twilio, failed(make_event, title="🚨 Training failed: llama ✅", error_details="NaN 🔥 in “loss” — step 12…"))
    body = form(webhook_server.received[0])["Body"]
    assert body == "[AFS] ERROR Training failed: llama (r1) - NaN in \"loss\" - step 12..."
    assert measure(body).encoding == "GSM-7"


def test_a_chinese_model_name_keeps_its_letters_in_ucs2(twilio, webhook_server, make_event):
    send_now(twilio, failed(make_event, title="Training failed: 模型", model_name="模型", error_details="显存不足" * 40))
    body = form(webhook_server.received[0])["Body"]
    sms = measure(body)
    assert body.startswith("[AFS] ERROR Training failed: 模型 (r1) - 显存不足") and body.endswith("…")
    assert sms.encoding == "UCS-2" and sms.units == 134 and sms.segments == 2


def test_hostile_text_arrives_as_plain_words_on_one_line(twilio, webhook_server, make_event):
    send_now(twilio, failed(make_event, title="@everyone\nTraining failed:\r\n\x1b[31m llama\x00\u202e",
                            error_details="line1\nline2\tEND\x07 <b>x</b> & [y](z)"))
    body = form(webhook_server.received[0])["Body"]
    # The colour escape goes whole: no "[31m" left of it.
    assert body == "[AFS] ERROR @everyone Training failed: llama (r1) - line1 line2 END <b>x</b> & [y](z)"
    assert all(ch >= " " for ch in body)


def test_letters_above_u_ffff_keep_the_text_in_ucs2_counted_as_surrogate_pairs(twilio, webhook_server, make_event):
    """CJK Extension B letters have no GSM-7 form: dropping them would lose the words."""
    send_now(twilio, failed(make_event, error_details="𠀀𠀁 model failed 🚀"))
    body = form(webhook_server.received[0])["Body"]
    assert body == "[AFS] ERROR Training failed: llama (r1) - 𠀀𠀁 model failed"
    sms = measure(body)
    assert sms.encoding == "UCS-2" and sms.units == len(body.encode("utf-16-le")) // 2 == len(body) + 2


def test_a_lone_surrogate_does_not_lose_the_event(twilio, webhook_server, make_event):
    assert send_now(twilio, failed(make_event, error_details="bad \ud800 byte")).delivered
    assert form(webhook_server.received[0])["Body"].endswith("- bad byte")


def test_text_that_is_nothing_but_emoji_is_refused_not_sent_empty(twilio, webhook_server, afs_plugins, make_event):
    afs_plugins.register(PlainText("🚀🔥\n"), name="plain")
    outcome = send_now(twilio, failed(make_event))
    assert outcome.permanent and "nothing left to text" in outcome.error and webhook_server.received == []


# -- what Twilio answers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (refused(21211, f"The 'To' number {ALICE} is not a valid phone number."),
         "Twilio 21211: The 'To' number +44…1234 is not a valid phone number. (not a valid phone number: check TWILIO_TO)"),
        (refused(21614, f"'To' number {ALICE} is not a valid mobile number"), "not a mobile number"),
        (refused(21608, f"The number {ALICE} is unverified. Trial accounts cannot send messages to unverified numbers"),
         "a trial account can only text verified numbers: verify this one in the Twilio console"),
        (refused(20003, "Authenticate", status=401), "authentication failed: check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"),
        (Scripted(status=401, body="Unauthorized"), "HTTP 401, Unauthorized (authentication failed"),
        (refused(21610, "Attempt to send to unsubscribed recipient"), "replied STOP"),
        (refused(21408, "Permission to send an SMS has not been enabled for the region"), "Geo permissions"),
        (refused(30000, "Something new", status=400), "HTTP 400: Twilio 30000: Something new"),
    ],
)
def test_permanent_errors_are_asked_once_and_explained(twilio, webhook_server, afs_plugins, tmp_path, make_event,
                                                         answer, says):
    webhook_server.respond(answer)
    manager = engine(afs_plugins, tmp_path, twilio)
    result = manager.notify_training_failed("llama", "r1", "boom")
    assert manager.flush(timeout=10) and result.wait(5)
    manager.close(timeout=5)
    outcome = result.outcomes["twilio"]
    assert outcome.status is DeliveryStatus.FAILED and outcome.permanent and says in outcome.error
    assert ALICE not in outcome.error  # the number Twilio quoted is masked
    assert len(webhook_server.received) == 1  # exactly one request


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retried(twilio, webhook_server, afs_plugins, tmp_path, status):
    webhook_server.respond(Scripted(status=status, body="<html>oops</html>"))
    manager = engine(afs_plugins, tmp_path, twilio)
    result = manager.notify_training_failed("llama", "r1", "boom")
    assert manager.flush(timeout=10) and result.wait(5)
    manager.close(timeout=5)
    assert result.outcomes["twilio"].delivered and len(webhook_server.received) == 2


@pytest.mark.parametrize("status", [429, 400])
def test_too_many_requests_is_transient_with_twilios_retry_after(twilio, webhook_server, make_event, status):
    webhook_server.respond(refused(20429, "Too Many Requests", status=status, headers={"Retry-After": "7"}))
    outcome = send_now(twilio, failed(make_event))
    assert not outcome.permanent and outcome.retry_after == 7.0 and "20429" in outcome.error


def test_a_429_is_retried_no_sooner_than_its_retry_after(twilio, webhook_server, afs_plugins, tmp_path):
    webhook_server.respond(refused(20429, "Too Many Requests", status=429, headers={"Retry-After": "1"}))
    manager = engine(afs_plugins, tmp_path, twilio)
    result = manager.notify_training_failed("llama", "r1", "boom")
    assert manager.flush(timeout=10) and result.wait(5)
    manager.close(timeout=5)
    first, second = webhook_server.received
    assert result.outcomes["twilio"].delivered and second.at - first.at >= 1.0
    assert form(first) == form(second)


def test_a_429_holds_the_account_the_next_number_waits_and_the_retry_texts_only_the_first(
        make_twilio, webhook_server, afs_plugins, tmp_path):
    channel = make_twilio(to=[ALICE, BOB])
    webhook_server.respond(refused(20429, "Too Many Requests", status=429, headers={"Retry-After": "1"}))
    manager = engine(afs_plugins, tmp_path, channel)
    result = manager.notify_training_failed("llama", "r1", "boom")
    assert manager.flush(timeout=10) and result.wait(5)
    manager.close(timeout=5)
    assert recipients(webhook_server) == [ALICE, BOB, ALICE]
    first, second, _ = webhook_server.received
    assert second.at - first.at >= 1.0 and result.outcomes["twilio"].delivered


def test_one_invalid_number_does_not_stop_the_other_and_is_named(make_twilio, webhook_server, afs_plugins, tmp_path):
    channel = make_twilio(to=[BOB, ALICE])
    webhook_server.respond(refused(21211, f"The 'To' number {BOB} is not a valid phone number."), created("SM2"))
    manager = engine(afs_plugins, tmp_path, channel)
    result = manager.notify_training_failed("llama", "r1", "boom")
    assert manager.flush(timeout=10) and result.wait(5)
    manager.close(timeout=5)
    assert recipients(webhook_server) == [BOB, ALICE]  # one request each, no retry
    outcome = result.outcomes["twilio"]
    assert outcome.status is DeliveryStatus.FAILED and outcome.permanent
    assert outcome.error.startswith("+15…0987: HTTP 400, Twilio 21211:") and outcome.error.endswith("(sent to 1 of 2)")
    assert BOB not in outcome.error
    (row,) = Store(tmp_path / "afs.db").history(limit=1)[0].deliveries
    assert row.last_error == outcome.error


def test_a_transient_failure_for_one_number_is_retried_for_it_alone(make_twilio, webhook_server, afs_plugins, tmp_path):
    channel = make_twilio(to=[ALICE, BOB])
    webhook_server.respond(created("SM1"), Scripted(status=503, body="busy"), created("SM2"))
    manager = engine(afs_plugins, tmp_path, channel)
    result = manager.notify_training_failed("llama", "r1", "boom")
    assert manager.flush(timeout=10) and result.wait(5)
    manager.close(timeout=5)
    assert recipients(webhook_server) == [ALICE, BOB, BOB]
    assert result.outcomes["twilio"].delivered


def test_an_authentication_failure_is_not_asked_again_for_the_other_numbers(make_twilio, webhook_server, make_event):
    channel = make_twilio(to=[ALICE, BOB])
    webhook_server.respond(refused(20003, "Authenticate", status=401))
    outcome = send_now(channel, failed(make_event))
    assert outcome.permanent and len(webhook_server.received) == 1
    assert "+44…1234: HTTP 401, Twilio 20003" in outcome.error and "+15…0987: HTTP 401, Twilio 20003" in outcome.error


def test_a_stalled_twilio_cannot_hold_a_send_past_the_deadline(make_twilio, webhook_server, make_event):
    channel = make_twilio(timeout=1)
    webhook_server.respond(Scripted(delay=10))
    started = time.monotonic()
    outcome = send_now(channel, failed(make_event))
    assert not outcome.permanent and "deadline" in outcome.error and time.monotonic() - started < 3


# -- through the engine: what is sent at all ----------------------------------------------


def test_the_engine_texts_errors_but_not_info_by_default(twilio, webhook_server, afs_plugins, tmp_path):
    manager = engine(afs_plugins, tmp_path, twilio)
    started = manager.notify_training_started("llama", "r1")
    failed_run = manager.notify_training_failed("llama", "r1", RuntimeError("CUDA out of memory"))
    assert manager.flush(timeout=10) and failed_run.wait(5) and started.wait(5)
    manager.close(timeout=5)
    assert "twilio" not in started.outcomes or started.outcomes["twilio"].status is DeliveryStatus.FILTERED
    assert failed_run.outcomes["twilio"].delivered
    (request,) = webhook_server.received
    assert form(request)["Body"] == "[AFS] ERROR Training failed: llama (r1) - RuntimeError: CUDA out of memory"


def test_afs_twilio_min_level_lets_info_through(twilio, webhook_server, afs_plugins, tmp_path):
    manager = engine(afs_plugins, tmp_path, twilio, env={"AFS_TWILIO_MIN_LEVEL": "info"})
    manager.notify_training_started("llama", "r1")
    assert manager.flush(timeout=10)
    manager.close(timeout=5)
    assert form(webhook_server.received[0])["Body"].startswith("[AFS] INFO Training started: llama (r1)")


def test_secrets_never_reach_logs_errors_or_history(twilio, webhook_server, afs_plugins, tmp_path, caplog):
    """Even a service (or a proxy) that echoes the credentials back in its error."""
    webhook_server.respond(refused(20003, f"bad credentials Basic {CREDENTIALS} token {TOKEN}", status=401))
    manager = engine(afs_plugins, tmp_path, twilio)
    with caplog.at_level(logging.DEBUG):
        result = manager.notify_training_failed("llama", "r1", "boom")
        assert manager.flush(timeout=10) and result.wait(5)
        manager.close(timeout=5)
    assert result.outcomes["twilio"].permanent
    assert_no_secret(caplog.text, result.outcomes["twilio"].error, repr(twilio), twilio.describe())
    records = Store(tmp_path / "afs.db").history(limit=5)
    assert_no_secret(repr(records))
    for path in tmp_path.glob("afs.db*"):
        assert_no_secret(path.read_bytes().decode("latin-1"))
    assert "/2010-04-01/Accounts/" in caplog.text  # the request line was logged


def test_a_secret_echoed_across_the_quotes_cut_is_masked_before_the_cut(twilio, webhook_server, make_event):
    """Cut first, the token would be split at the 200th character and its start shown."""
    webhook_server.respond(refused(20003, "Authenticate: " + "." * 160 + TOKEN, status=401))
    outcome = send_now(twilio, failed(make_event))
    assert outcome.permanent and "***" in outcome.error
    assert TOKEN[:6] not in outcome.error


def test_the_errors_the_channel_raises_itself_carry_no_secret(make_twilio, webhook_server, make_event):
    """Masked in the plugin, before anything (the store, a log, the caller) gets the error."""
    twilio = make_twilio()
    message = twilio.format(failed(make_event))
    webhook_server.respond(refused(21211, f"bad To, token was {TOKEN} auth Basic {CREDENTIALS}"),
                           Scripted(status=503, body=f"upstream down token={TOKEN}"))
    for permanent in (True, False):
        with pytest.raises(DeliveryError) as caught:
            twilio.deliver(message)
        assert caught.value.permanent is permanent and "***" in caught.value.reason
        assert_no_secret(caught.value.reason, str(caught.value))
    webhook_server.respond(refused(20429, f"slow down {TOKEN}", status=429))
    with pytest.raises(DeliveryError) as caught:
        twilio.deliver(message)
    assert_no_secret(caught.value.reason)
