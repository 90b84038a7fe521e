"""Incidents of a run: triggered once per kind, resolved by the run's recovery, only when open."""

import pytest

from afs_core import builders, send_now
from afs_core.events import EventType
from afs_core.results import DeliveryStatus
from afs_core.testing import Scripted

FAILED = Scripted(status=500, body='{"status": "error"}')


def actions(server):
    return [(r.json["event_action"], r.json["dedup_key"]) for r in server.received]


def test_a_repeating_failure_is_one_incident_and_one_resolve(pagerduty, webhook_server):
    for attempt in range(3):
        assert send_now(pagerduty, builders.training_failed("m", "run-1", f"boom {attempt}")).delivered
    assert send_now(pagerduty, builders.training_completed("m", "run-1", 60.0)).delivered
    assert actions(webhook_server) == [("trigger", "afs/run-1/failed")] * 3 + [("resolve", "afs/run-1/failed")]


def test_a_recovery_with_no_open_incident_sends_nothing_and_is_filtered(pagerduty, webhook_server):
    outcome = send_now(pagerduty, builders.training_resumed("m", "run-1"))
    assert outcome.status is DeliveryStatus.FILTERED and outcome.error == "no open incident for run run-1"
    assert not outcome.permanent and webhook_server.received == []


def test_another_runs_recovery_does_not_resolve_this_run(pagerduty, webhook_server):
    send_now(pagerduty, builders.training_failed("m", "run-1", "boom"))
    assert send_now(pagerduty, builders.training_completed("m", "run-2", 1.0)).status is DeliveryStatus.FILTERED
    assert actions(webhook_server) == [("trigger", "afs/run-1/failed")]


def test_a_second_recovery_finds_nothing_left_to_resolve(pagerduty, webhook_server):
    send_now(pagerduty, builders.training_failed("m", "run-1", "boom"))
    assert send_now(pagerduty, builders.training_resumed("m", "run-1")).delivered
    assert send_now(pagerduty, builders.training_completed("m", "run-1", 1.0)).status is DeliveryStatus.FILTERED
    assert len(webhook_server.received) == 2


def test_a_resume_after_nan_resolves_it(pagerduty, webhook_server):
    send_now(pagerduty, builders.nan_detected("m", "run-1", step=7))
    assert send_now(pagerduty, builders.training_resumed("m", "run-1", "ckpt/6")).delivered
    assert actions(webhook_server) == [("trigger", "afs/run-1/nan"), ("resolve", "afs/run-1/nan")]


def test_completion_resolves_each_open_key_with_its_own_request(pagerduty, webhook_server):
    send_now(pagerduty, builders.training_failed("m", "run-1", "boom"))
    send_now(pagerduty, builders.nan_detected("m", "run-1"))
    send_now(pagerduty, builders.error("disk full", model_name="m", run_id="run-1"))
    outcome = send_now(pagerduty, builders.training_completed("m", "run-1", 1.0))
    assert outcome.delivered and set(outcome.receipt) == {"afs/run-1/failed", "afs/run-1/nan", "afs/run-1/error"}
    assert sorted(actions(webhook_server)[3:]) == [
        ("resolve", "afs/run-1/error"), ("resolve", "afs/run-1/failed"), ("resolve", "afs/run-1/nan")]


def test_a_retried_recovery_resolves_only_the_keys_left(pagerduty, webhook_server, accepted):
    send_now(pagerduty, builders.training_failed("m", "run-1", "boom"))
    send_now(pagerduty, builders.nan_detected("m", "run-1"))
    send_now(pagerduty, builders.error("x", model_name="m", run_id="run-1"))
    webhook_server.respond(accepted, FAILED, accepted)
    done = builders.training_completed("m", "run-1", 1.0)
    first = send_now(pagerduty, done)
    assert first.status is DeliveryStatus.FAILED and not first.permanent
    assert "HTTP 500" in first.error and "(sent to 2 of 3)" in first.error
    resolved_first = [key for action, key in actions(webhook_server)[3:]]
    assert send_now(pagerduty, done).delivered  # the engine's retry: the same event again
    retried = [key for action, key in actions(webhook_server)[6:]]
    assert retried == [resolved_first[1]]  # only the one that failed
    assert send_now(pagerduty, done).status is DeliveryStatus.FILTERED


def test_a_gpu_recovery_resolves_only_its_gpu_alert(pagerduty, webhook_server):
    pagerduty.min_level = pagerduty.min_level.WARNING  # as with AFS_PAGERDUTY_MIN_LEVEL=warning
    send_now(pagerduty, builders.training_failed("m", "run-1", "boom"))
    send_now(pagerduty, builders.gpu_memory_warning(0.97, 0.95, gpu=0, model_name="m", run_id="run-1"))
    send_now(pagerduty, builders.gpu_utilization_low(0.02, 0.10, gpu=0, model_name="m", run_id="run-1"))
    assert send_now(pagerduty, builders.gpu_recovered("memory", 0.5, gpu=0, model_name="m", run_id="run-1")).delivered
    assert actions(webhook_server)[3:] == [("resolve", "afs/run-1/gpu-memory")]
    assert send_now(pagerduty, builders.gpu_recovered("memory", 0.4, gpu=0, model_name="m",
                                                      run_id="run-1")).status is DeliveryStatus.FILTERED
    send_now(pagerduty, builders.training_completed("m", "run-1", 1.0))
    assert sorted(actions(webhook_server)[4:]) == [("resolve", "afs/run-1/failed"),
                                                   ("resolve", "afs/run-1/gpu-utilization")]


def test_a_gpu_alert_for_two_gpus_stays_open_until_both_recovered(pagerduty, webhook_server):
    pagerduty.min_level = pagerduty.min_level.WARNING
    for gpu in (0, 1):
        send_now(pagerduty, builders.gpu_memory_warning(0.97, 0.95, gpu=gpu, run_id="run-1"))
    first = send_now(pagerduty, builders.gpu_recovered("memory", 0.5, gpu=0, run_id="run-1"))
    assert first.status is DeliveryStatus.FILTERED and "stays open for GPU 1" in first.error
    assert len(webhook_server.received) == 2
    assert send_now(pagerduty, builders.gpu_recovered("memory", 0.5, gpu=1, run_id="run-1")).delivered
    assert actions(webhook_server)[2:] == [("resolve", "afs/run-1/gpu-memory")]


def test_a_gpu_monitor_without_a_run_id_resolves_on_its_host(pagerduty, webhook_server):
    pagerduty.min_level = pagerduty.min_level.WARNING
    send_now(pagerduty, builders.gpu_memory_warning(0.97, 0.95, gpu=0))
    assert send_now(pagerduty, builders.gpu_recovered("memory", 0.5, gpu=0)).delivered
    (_, trigger), (_, resolve) = actions(webhook_server)
    assert trigger == resolve and trigger.startswith("afs-host/") and trigger.endswith("/gpu-memory")


def test_a_gpu_warning_below_the_least_level_pages_nobody(pagerduty, webhook_server):
    outcome = send_now(pagerduty, builders.gpu_memory_warning(0.97, 0.95, gpu=0, run_id="run-1"))
    assert outcome.status is DeliveryStatus.FILTERED and "below this channel's minimum level (error)" in outcome.error
    recovered = send_now(pagerduty, builders.gpu_recovered("memory", 0.5, gpu=0, run_id="run-1"))
    assert recovered.status is DeliveryStatus.FILTERED and webhook_server.received == []


def test_a_trigger_refused_for_good_leaves_nothing_to_resolve(pagerduty, webhook_server):
    webhook_server.respond(status=400, body='{"status": "invalid event", "errors": ["bad"]}')
    assert send_now(pagerduty, builders.training_failed("m", "run-1", "boom")).permanent
    assert send_now(pagerduty, builders.training_completed("m", "run-1", 1.0)).status is DeliveryStatus.FILTERED
    assert len(webhook_server.received) == 1


def test_a_recovery_waits_for_a_trigger_that_is_still_being_retried(pagerduty, webhook_server):
    webhook_server.respond(FAILED)
    failed = builders.training_failed("m", "run-1", "boom")
    assert not send_now(pagerduty, failed).delivered  # PagerDuty down: the engine will retry it
    resumed = builders.training_resumed("m", "run-1")
    waiting = send_now(pagerduty, resumed)
    assert waiting.status is DeliveryStatus.FAILED and not waiting.permanent
    assert "has not accepted the trigger of afs/run-1/failed" in waiting.error
    assert len(webhook_server.received) == 1  # no resolve for a key PagerDuty does not know
    assert send_now(pagerduty, failed).delivered  # the trigger's retry
    assert send_now(pagerduty, resumed).delivered  # then the recovery's retry resolves it
    assert actions(webhook_server) == [("trigger", "afs/run-1/failed")] * 2 + [("resolve", "afs/run-1/failed")]


def test_a_trigger_given_up_long_ago_is_not_waited_for(pagerduty, webhook_server, monkeypatch):
    import time

    webhook_server.respond(FAILED)
    send_now(pagerduty, builders.training_failed("m", "run-1", "boom"))
    later = time.time() + 25 * 3600
    monkeypatch.setattr(time, "time", lambda: later)
    outcome = send_now(pagerduty, builders.training_completed("m", "run-1", 1.0))
    assert outcome.status is DeliveryStatus.FILTERED and len(webhook_server.received) == 1
    assert pagerduty.incidents.get("afs/run-1/failed") is None


def test_a_key_is_open_only_after_pagerduty_answered_202(pagerduty, webhook_server):
    webhook_server.respond(FAILED)
    send_now(pagerduty, builders.training_failed("m", "run-1", "boom"))
    assert pagerduty.incidents.get("afs/run-1/failed").state == "triggering"
    send_now(pagerduty, builders.training_failed("m", "run-1", "boom"))
    assert pagerduty.incidents.get("afs/run-1/failed").state == "open"
    send_now(pagerduty, builders.training_resumed("m", "run-1"))
    assert pagerduty.incidents.get("afs/run-1/failed") is None


@pytest.mark.parametrize("event_type", [EventType.TRAINING_COMPLETED, EventType.TRAINING_RESUMED])
def test_a_custom_recovery_without_a_run_id_resolves_the_hosts_incidents(pagerduty, webhook_server, event_type):
    send_now(pagerduty, builders.error("boom"))
    assert send_now(pagerduty, builders.custom("done", event_type=event_type)).delivered
    (_, trigger), (action, resolved) = actions(webhook_server)
    assert action == "resolve" and resolved == trigger and trigger.startswith("afs-host/")


def test_a_failure_older_than_the_runs_resume_is_not_paged(pagerduty, webhook_server):
    failed = builders.training_failed("m", "run-1", "Killed")  # left in a crashed process's journal
    resumed = builders.training_resumed("m", "run-1")
    assert send_now(pagerduty, resumed).status is DeliveryStatus.FILTERED  # delivered first by the next process
    late = send_now(pagerduty, failed)
    assert late.status is DeliveryStatus.FILTERED and late.error.startswith("not paged: the run completed or resumed")
    assert webhook_server.received == []
    assert send_now(pagerduty, builders.training_failed("m", "run-1", "again")).delivered  # newer trouble pages


def test_a_gpu_recovery_does_not_hold_back_an_older_alert_of_another_gpu(pagerduty, webhook_server):
    pagerduty.min_level = pagerduty.min_level.WARNING
    older = builders.gpu_memory_warning(0.97, 0.95, gpu=1, run_id="run-1")
    send_now(pagerduty, builders.gpu_recovered("memory", 0.5, gpu=0, run_id="run-1"))
    assert send_now(pagerduty, older).delivered


def test_progress_after_a_stall_resolves_the_stall_only(pagerduty, webhook_server):
    pagerduty.min_level = pagerduty.min_level.WARNING  # a stall is a warning: it pages from WARNING
    send_now(pagerduty, builders.training_failed("m", "run-1", "boom"))
    assert send_now(pagerduty, builders.training_stalled("m", "run-1", 1800.0)).delivered
    assert send_now(pagerduty, builders.training_progress_resumed("m", "run-1", 1900.0)).delivered
    assert actions(webhook_server) == [("trigger", "afs/run-1/failed"), ("trigger", "afs/run-1/stalled"),
                                       ("resolve", "afs/run-1/stalled")]
    again = send_now(pagerduty, builders.training_progress_resumed("m", "run-1", 5.0))
    assert again.status is DeliveryStatus.FILTERED and len(webhook_server.received) == 3


def test_progress_after_a_stall_never_pages_by_itself(pagerduty, webhook_server):
    outcome = send_now(pagerduty, builders.training_progress_resumed("m", "run-1", 1900.0))
    assert outcome.status is DeliveryStatus.FILTERED and outcome.error == "no open incident for run run-1"
    assert webhook_server.received == []
