"""afs_webhook.verify, as a receiver without the standardwebhooks package uses it."""

import base64
import time

import pytest
from standardwebhooks import Webhook

from afs_core import send_now
from afs_webhook import WebhookVerificationError, new_secret, verify
from afs_webhook.signing import decode_secret, signature_headers


@pytest.fixture
def request_(hook, webhook_server, make_event):
    """A real request as the loopback receiver got it."""
    assert send_now(hook, make_event(title="verify me")).delivered
    return webhook_server.received[0]


def test_a_genuine_request_verifies_and_its_parsed_body_is_returned(request_, kit):
    body = verify(request_.body, request_.headers, kit.SECRET)
    assert body["title"] == "verify me" and body["schema"] == "afs.event/1"
    assert verify(request_.body.decode(), {k.upper(): v for k, v in request_.headers.items()}, kit.SECRET) == body


def test_a_tampered_body_id_or_timestamp_is_rejected(request_, kit):
    headers = request_.headers
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(request_.body.replace(b"verify me", b"verify m3"), headers, kit.SECRET)
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(request_.body, {**headers, "webhook-id": "another"}, kit.SECRET)
    moved = str(int(headers["webhook-timestamp"]) + 1)
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(request_.body, {**headers, "webhook-timestamp": moved}, kit.SECRET)


def test_the_wrong_secret_is_rejected_without_quoting_either(request_, kit):
    other = new_secret()
    with pytest.raises(WebhookVerificationError, match="no matching signature") as caught:
        verify(request_.body, request_.headers, other)
    assert other not in str(caught.value) and kit.SECRET[6:] not in str(caught.value)


@pytest.mark.parametrize(("offset", "words"), [(-301, "old"), (301, "in the future")])
def test_a_stale_or_future_timestamp_is_rejected(kit, offset, words):
    now = time.time()
    body = b'{"id": "x"}'
    headers = signature_headers(kit.KEY, "x", body, now=now + offset)
    with pytest.raises(WebhookVerificationError, match=words):
        verify(body, headers, kit.SECRET, now=now)
    assert verify(body, headers, kit.SECRET, tolerance=400, now=now) == {"id": "x"}


def test_the_tolerance_edge_is_inclusive(kit):
    now = 1_800_000_000.0
    body = b"{}"
    assert verify(body, signature_headers(kit.KEY, "x", body, now=now - 300), kit.SECRET, now=now) == {}
    with pytest.raises(WebhookVerificationError):
        verify(body, signature_headers(kit.KEY, "x", body, now=now - 301), kit.SECRET, now=now)


def test_any_of_several_signatures_may_match(request_, kit):
    genuine = request_.headers["webhook-signature"]
    forged = "v1," + base64.b64encode(b"x" * 32).decode()
    headers = {**request_.headers, "webhook-signature": f"{forged} v1a,whatever {genuine}"}
    assert verify(request_.body, headers, kit.SECRET)["title"] == "verify me"
    with pytest.raises(WebhookVerificationError):
        verify(request_.body, {**request_.headers, "webhook-signature": f"{forged} v2,{genuine[3:]}"}, kit.SECRET)


def test_signatures_are_compared_in_constant_time(request_, kit, monkeypatch):
    import hmac  # verify() imports it when called: the module's function is the one it uses

    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    verify(request_.body, request_.headers, kit.SECRET)
    assert calls and calls[0][1] == request_.headers["webhook-signature"].encode()


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_is_named(request_, kit, missing):
    headers = {k: v for k, v in request_.headers.items() if k.lower() != missing}
    with pytest.raises(WebhookVerificationError, match=f"missing header {missing}"):
        verify(request_.body, headers, kit.SECRET)


@pytest.mark.parametrize("stamp", ["soon", "1.5e9", "-1", ""])
def test_a_timestamp_that_is_not_unix_seconds_is_rejected(kit, stamp):
    headers = {**signature_headers(kit.KEY, "x", b"{}"), "webhook-timestamp": stamp}
    with pytest.raises(WebhookVerificationError):
        verify(b"{}", headers, kit.SECRET)


def test_a_signed_body_that_is_not_json_is_rejected(kit):
    headers = signature_headers(kit.KEY, "x", b"not json")
    with pytest.raises(WebhookVerificationError, match="not JSON"):
        verify(b"not json", headers, kit.SECRET)


def test_a_webhook_id_that_is_not_text_is_rejected_not_raised_as_an_encoding_error(kit):
    headers = {**signature_headers(kit.KEY, "msg_1", b"{}"), "webhook-id": "msg\udcff"}
    with pytest.raises(WebhookVerificationError, match="webhook-id is not valid text"):
        verify(b"{}", headers, kit.SECRET)


def test_a_validly_signed_body_nested_too_deeply_is_rejected_not_a_recursion_error(kit):
    body = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(WebhookVerificationError, match="nested too deeply"):
        verify(body, signature_headers(kit.KEY, "msg_1", body), kit.SECRET)


@pytest.mark.parametrize("secret", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_", "whsec_not*base64", "whsec_A"])
def test_a_malformed_secret_is_a_plain_value_error_that_does_not_quote_it(kit, secret):
    with pytest.raises(ValueError, match="the secret") as caught:
        verify(b"{}", signature_headers(kit.KEY, "x", b"{}"), secret)
    assert not isinstance(caught.value, WebhookVerificationError)
    if secret != "whsec_":  # the bare prefix is named in the message, as what is expected
        assert secret not in str(caught.value)


def test_what_verify_accepts_standardwebhooks_accepts_and_the_other_way_round(kit):
    body = b'{"id": "msg_1"}'
    ours = signature_headers(kit.KEY, "msg_1", body)
    assert Webhook(kit.SECRET).verify(body, ours) == {"id": "msg_1"}
    from datetime import datetime, timezone

    now = datetime.now(tz=timezone.utc)
    theirs = {"webhook-id": "msg_1", "webhook-timestamp": str(int(now.timestamp())),
              "webhook-signature": Webhook(kit.SECRET).sign("msg_1", now, body)}
    assert verify(body, theirs, kit.SECRET) == {"id": "msg_1"}


def test_new_secrets_are_fresh_32_byte_keys():
    first, second = new_secret(), new_secret()
    assert first != second and first.startswith("whsec_") and len(decode_secret(first)) == 32


def test_unpadded_and_padded_secrets_decode_alike(kit):
    key = b"k" * 20  # base64 needs one "=" of padding
    padded = "whsec_" + base64.b64encode(key).decode()
    assert padded.endswith("=") and decode_secret(padded) == decode_secret(padded.rstrip("=")) == key
