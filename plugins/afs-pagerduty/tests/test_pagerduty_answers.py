"""What PagerDuty's answers mean: 202 taken, 400 refused for good, 429 and 5xx retried."""

import json
import logging
import time

import pytest

from afs_core import NotificationManager, builders, send_now
from afs_core.results import DeliveryStatus
from afs_core.testing import Scripted
from afs_pagerduty import PagerDutyChannel

INVALID_EVENT = {"status": "invalid event", "message": "Event object is invalid",
                 "errors": ["'payload.summary' is missing or blank", "'payload.severity' is invalid"]}


@pytest.mark.parametrize(
    ("status", "body", "headers", "permanent", "said"),
    [
        (400, INVALID_EVENT, {}, True,
         "HTTP 400: Event object is invalid: 'payload.summary' is missing or blank; 'payload.severity' is invalid"),
        (400, {"status": "invalid event", "message": "Event object is invalid",
               "errors": ["Length of 'routing_key' is incorrect (should be 32 characters)"]}, {}, True,
         "check PAGERDUTY_ROUTING_KEY"),
        (400, "Invalid routing key", {}, True, "HTTP 400: Invalid routing key (check PAGERDUTY_ROUTING_KEY"),
        (401, "", {}, True, "HTTP 401: no body (check PAGERDUTY_ROUTING_KEY and PAGERDUTY_EVENTS_URL)"),
        (403, {"message": "Forbidden"}, {}, True, "HTTP 403: Forbidden"),
        (404, "Not Found", {}, True, "HTTP 404: Not Found (check PAGERDUTY_ROUTING_KEY and PAGERDUTY_EVENTS_URL)"),
        (413, "Request Entity Too Large", {}, True, "HTTP 413"),
        (200, "ok", {}, True, "PagerDuty accepts an event with 202"),
        (429, {"status": "throttle event", "message": "Requests for this service are arriving too quickly."},
         {}, False, "HTTP 429: throttled by PagerDuty"),
        (500, "Internal Server Error", {}, False, "HTTP 500: Internal Server Error"),
        (502, "<html>Bad Gateway</html>", {}, False, "HTTP 502"),
        (503, {"status": "unavailable"}, {"Retry-After": "7"}, False, "HTTP 503: unavailable"),
    ],
)
def test_answers_are_classified(pagerduty, webhook_server, status, body, headers, permanent, said):
    text = body if isinstance(body, str) else json.dumps(body)
    webhook_server.respond(status=status, body=text, headers=headers)
    outcome = send_now(pagerduty, builders.training_failed("m", "run-1", "boom"))
    assert outcome.status is DeliveryStatus.FAILED and outcome.permanent is permanent
    assert said in outcome.error
    assert len(webhook_server.received) == 1


def test_a_202_is_delivered_with_pagerdutys_answer_as_receipt(pagerduty, webhook_server):
    webhook_server.respond(status=202, body=json.dumps({"status": "success", "message": "Event processed",
                                                        "dedup_key": "afs/run-1/failed"}))
    outcome = send_now(pagerduty, builders.training_failed("m", "run-1", "boom"))
    assert outcome.delivered and outcome.receipt["dedup_key"] == "afs/run-1/failed"


def test_429_and_5xx_honour_retry_after(pagerduty, webhook_server):
    webhook_server.respond(status=429, body="{}", headers={"Retry-After": "2"})
    assert send_now(pagerduty, builders.training_failed("m", "run-1", "boom")).retry_after == 2.0
    webhook_server.respond(status=503, body="{}", headers={"Retry-After": "7"})
    other = PagerDutyChannel("Z" * 32, pagerduty.webhook_url, timeout=3)  # its own routing key is not held
    assert send_now(other, builders.training_failed("m", "run-1", "boom")).retry_after == 7.0


def test_a_429_holds_later_sends_with_that_routing_key(pagerduty, webhook_server):
    webhook_server.respond(status=429, body="{}", headers={"Retry-After": "0.4"})
    assert not send_now(pagerduty, builders.training_failed("m", "run-1", "boom")).delivered
    assert send_now(pagerduty, builders.training_failed("m", "run-1", "boom")).delivered
    first, second = webhook_server.received
    assert second.at - first.at >= 0.4


def test_the_engine_retries_a_5xx_and_never_a_400(pagerduty, webhook_server, afs_plugins, tmp_path, accepted):
    from afs_core.delivery.store import Store

    webhook_server.respond(Scripted(status=502, body="Bad Gateway"), accepted,
                           Scripted(status=400, body=json.dumps(INVALID_EVENT)))
    manager = NotificationManager(plugins=afs_plugins, store=Store(tmp_path / "afs.db"))
    manager.register_channel("pagerduty", pagerduty)
    try:
        retried = manager.notify_training_failed("m", "run-1", "boom")
        assert manager.flush(timeout=20) is True and retried.wait(5)
        assert retried.outcomes["pagerduty"].status is DeliveryStatus.DELIVERED
        refused = manager.notify_training_failed("m", "run-2", "boom")
        assert manager.flush(timeout=20) is True and refused.wait(5)
        assert refused.outcomes["pagerduty"].status is DeliveryStatus.FAILED
    finally:
        manager.close(timeout=5)
    assert [r.json["dedup_key"] for r in webhook_server.received] == [
        "afs/run-1/failed", "afs/run-1/failed", "afs/run-2/failed"]


def test_a_routing_key_pagerduty_echoes_is_masked(pagerduty, webhook_server, routing_key, caplog):
    webhook_server.respond(status=400, body=json.dumps({"message": "Event object is invalid",
                                                        "errors": [f"routing_key {routing_key} is unknown"]}))
    with caplog.at_level(logging.DEBUG):
        outcome = send_now(pagerduty, builders.training_failed("m", "run-1", "boom"))
    assert outcome.permanent and "routing_key *** is unknown" in outcome.error
    assert routing_key not in outcome.error and routing_key not in caplog.text


def test_a_stalled_server_cannot_hold_a_send_past_the_deadline(webhook_server, events_url, afs_plugins, routing_key):
    channel = PagerDutyChannel(routing_key, events_url, timeout=1)
    webhook_server.respond(Scripted(delay=10))
    started = time.monotonic()
    outcome = send_now(channel, builders.training_failed("m", "run-1", "boom"))
    assert not outcome.permanent and "deadline" in outcome.error and time.monotonic() - started < 3
