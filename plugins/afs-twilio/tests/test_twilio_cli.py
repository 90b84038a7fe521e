"""``afs test twilio`` and friends, run as a user runs them: in a subprocess, against Twilio's
API played by the loopback server."""

import json

from twilio_api import (
    ALICE,
    BOB,
    SENDER,
    SID,
    TOKEN,
    afs,
    assert_no_secret,
    basic_auth,
    created,
    form,
    recipients,
    refused,
    settings_for,
)

from afs_core.testing import Scripted


def test_afs_test_twilio_texts_every_number_and_shows_the_receipts(webhook_server):
    webhook_server.respond(created("SM1", ALICE), created("SM2", BOB))
    done = afs("test", "twilio", env=settings_for(webhook_server, TWILIO_TO=f"{ALICE},{BOB}"))
    assert done.returncode == 0, done.stderr
    said, _, answer = done.stdout.strip().partition("; the service answered: ")
    assert said == f"twilio: delivered to twilio to +44…1234, +15…0987 from +15…0006 through {webhook_server.url}"
    assert json.loads(answer) == {"+44…1234": "SM1", "+15…0987": "SM2"}  # the CLI writes JSON (… as \u2026)
    assert recipients(webhook_server) == [ALICE, BOB]
    request = webhook_server.received[0]
    assert basic_auth(request) == f"{SID}:{TOKEN}" and form(request)["From"] == SENDER
    # The test event is INFO: `afs test` sends it whatever the channel's least level.
    assert form(request)["Body"].startswith("[AFS] INFO AFS test notification: afs-test - If you can read this, the twilio channel works. Sent by 'afs test'")
    assert_no_secret(done.stdout, done.stderr)


def test_afs_test_twilio_says_why_a_trial_account_cannot_text_a_number(webhook_server):
    webhook_server.respond(refused(21608, f"The number {ALICE} is unverified. Trial accounts cannot send messages "
                                          f"to unverified numbers; verify {ALICE} at twilio.com/user/account"))
    done = afs("test", "twilio", env=settings_for(webhook_server))
    assert done.returncode == 1
    assert done.stdout.startswith("twilio: failed (permanent): HTTP 400, Twilio 21608: The number +44…1234 is unverified")
    assert "verify this one in the Twilio console (Phone Numbers > Verified Caller IDs)" in done.stdout
    assert ALICE not in done.stdout and len(webhook_server.received) == 1
    assert_no_secret(done.stdout, done.stderr)


def test_afs_test_twilio_with_a_bad_token_fails_once_without_showing_it(webhook_server):
    webhook_server.respond(refused(20003, f"Authenticate {TOKEN}", status=401))
    done = afs("test", "twilio", env=settings_for(webhook_server))
    assert done.returncode == 1 and "authentication failed" in done.stdout
    assert len(webhook_server.received) == 1
    assert_no_secret(done.stdout, done.stderr)


def test_afs_test_twilio_refuses_a_bad_number_before_sending_anything(webhook_server):
    done = afs("test", "twilio", env=settings_for(webhook_server, TWILIO_TO="07700 900123"))
    assert done.returncode == 2 and "TWILIO_TO: '07700 900123' is not a phone number in E.164 form" in done.stderr
    assert webhook_server.received == []


def test_a_retry_by_another_process_texts_only_the_number_left(webhook_server):
    """The first process texts Alice; Bob's 503 asks for an hour. `afs outbox flush`, a new
    process on the same store, texts Bob alone."""
    env = settings_for(webhook_server, TWILIO_TO=f"{ALICE},{BOB}")
    webhook_server.respond(created("SM1", ALICE), Scripted(status=503, body="busy", headers={"Retry-After": "3600"}))
    first = afs("error", "--model", "llama", "--run-id", "r1", "--error", "CUDA out of memory", "--timeout", "2", env=env)
    assert first.returncode == 1 and "twilio: pending" in first.stdout and "+15…0987: HTTP 503" in first.stdout
    assert recipients(webhook_server) == [ALICE, BOB]
    webhook_server.respond(created("SM2", BOB))
    second = afs("outbox", "flush", "--json", "--timeout", "10", env=env)
    assert second.returncode == 0, second.stderr + second.stdout
    assert json.loads(second.stdout)["delivered"] == 1
    assert recipients(webhook_server) == [ALICE, BOB, BOB]
    assert form(webhook_server.received[2])["Body"] == form(webhook_server.received[0])["Body"]
    assert_no_secret(first.stdout, first.stderr, second.stdout, second.stderr)
