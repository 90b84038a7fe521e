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


# -- a recovery ends only trouble older than itself -------------------------------------

UNAVAILABLE = Scripted(status=503, body='{"status": "unavailable"}', headers={"Retry-After": "4"})
REOPENED = "the incident was opened again after this recovery"


def test_a_retried_resolve_leaves_open_a_failure_newer_than_its_recovery(pagerduty, webhook_server, accepted):
    assert send_now(pagerduty, builders.training_failed("m", "run-1", "boom")).delivered  # attempt 1
    webhook_server.respond(UNAVAILABLE)
    completed = builders.training_completed("m", "run-1", 1.0)  # attempt 2
    first = send_now(pagerduty, completed)
    assert first.status is DeliveryStatus.FAILED and not first.permanent  # the engine retries it later
    again = builders.training_failed("m", "run-1", "boom again")  # attempt 3: new trouble, after the completion
    assert again.timestamp > completed.timestamp
    assert send_now(pagerduty, again).delivered  # folded by PagerDuty into the incident still open
    retried = send_now(pagerduty, completed)  # the completion's retry, once the new trigger was accepted
    assert retried.status is DeliveryStatus.FILTERED and not retried.permanent
    assert retried.error == f"{REOPENED} (afs/run-1/failed stays open)"
    assert actions(webhook_server) == [("trigger", "afs/run-1/failed"), ("resolve", "afs/run-1/failed"),
                                       ("trigger", "afs/run-1/failed")]
    assert pagerduty.incidents.get("afs/run-1/failed").state == "open"
    # The run's next recovery, newer than the new failure, resolves it.
    assert send_now(pagerduty, builders.training_resumed("m", "run-1")).delivered
    assert actions(webhook_server)[3:] == [("resolve", "afs/run-1/failed")]
    assert pagerduty.incidents.get("afs/run-1/failed") is None


def test_a_retried_resolve_drops_only_the_keys_triggered_again(pagerduty, webhook_server):
    send_now(pagerduty, builders.training_failed("m", "run-1", "boom"))
    send_now(pagerduty, builders.nan_detected("m", "run-1"))
    webhook_server.respond(UNAVAILABLE, UNAVAILABLE)
    completed = builders.training_completed("m", "run-1", 1.0)
    assert not send_now(pagerduty, completed).delivered  # both resolves answered 503
    assert send_now(pagerduty, builders.training_failed("m", "run-1", "boom again")).delivered
    retried = send_now(pagerduty, completed)
    assert retried.delivered and set(retried.receipt) == {"afs/run-1/nan"}  # the NaN is over; the new failure is not
    assert actions(webhook_server)[4:] == [("trigger", "afs/run-1/failed"), ("resolve", "afs/run-1/nan")]
    assert pagerduty.incidents.get("afs/run-1/failed").state == "open"
    assert pagerduty.incidents.get("afs/run-1/nan") is None


def test_a_resolve_retried_while_a_newer_trigger_awaits_its_own_retry_leaves_the_key(pagerduty, webhook_server):
    send_now(pagerduty, builders.training_failed("m", "run-1", "boom"))
    webhook_server.respond(UNAVAILABLE, FAILED)
    completed = builders.training_completed("m", "run-1", 1.0)
    assert not send_now(pagerduty, completed).delivered
    again = builders.training_failed("m", "run-1", "boom again")
    assert not send_now(pagerduty, again).delivered  # PagerDuty down: the new trigger waits for its retry
    retried = send_now(pagerduty, completed)
    assert retried.status is DeliveryStatus.FILTERED and retried.error.startswith(REOPENED)
    assert send_now(pagerduty, again).delivered
    assert [action for action, _ in actions(webhook_server)] == ["trigger", "resolve", "trigger", "trigger"]
    assert pagerduty.incidents.get("afs/run-1/failed").state == "open"


def test_a_newer_trigger_refused_for_good_does_not_keep_the_older_incident_open(pagerduty, webhook_server):
    send_now(pagerduty, builders.training_failed("m", "run-1", "boom"))
    webhook_server.respond(UNAVAILABLE, Scripted(status=400, body='{"status": "invalid event", "errors": ["bad"]}'))
    completed = builders.training_completed("m", "run-1", 1.0)
    assert not send_now(pagerduty, completed).delivered
    assert send_now(pagerduty, builders.training_failed("m", "run-1", "boom again")).permanent  # opened nothing
    assert send_now(pagerduty, completed).delivered  # so the recovery still ends the first failure
    assert actions(webhook_server)[3:] == [("resolve", "afs/run-1/failed")]
    assert pagerduty.incidents.get("afs/run-1/failed") is None


def test_a_key_triggered_again_while_its_resolve_is_on_its_way_stays_known(pagerduty, webhook_server, monkeypatch):
    send_now(pagerduty, builders.training_failed("m", "run-1", "boom"))
    completed = builders.training_completed("m", "run-1", 1.0)
    again = builders.training_failed("m", "run-1", "boom again")
    send = pagerduty._send

    def racing(message):  # another thread's new failure is accepted while the resolve is in flight
        if message["event_action"] == "resolve" and not racing.done:
            racing.done = True
            assert send_now(pagerduty, again).delivered
        return send(message)

    racing.done = False
    monkeypatch.setattr(pagerduty, "_send", racing)
    assert send_now(pagerduty, completed).delivered
    # The resolve may have reached PagerDuty after the trigger: the key stays known, so the
    # next recovery resolves it rather than finding nothing open.
    assert pagerduty.incidents.get("afs/run-1/failed").state == "open"
    assert send_now(pagerduty, builders.training_resumed("m", "run-1")).delivered
    assert actions(webhook_server)[-1] == ("resolve", "afs/run-1/failed")


def test_a_retried_gpu_recovery_ends_its_gpu_but_not_a_newer_alert(pagerduty, webhook_server):
    pagerduty.min_level = pagerduty.min_level.WARNING
    send_now(pagerduty, builders.gpu_memory_warning(0.97, 0.95, gpu=0, run_id="run-1"))
    webhook_server.respond(UNAVAILABLE)
    recovered = builders.gpu_recovered("memory", 0.5, gpu=0, run_id="run-1")
    assert not send_now(pagerduty, recovered).delivered
    assert send_now(pagerduty, builders.gpu_memory_warning(0.97, 0.95, gpu=1, run_id="run-1")).delivered
    retried = send_now(pagerduty, recovered)  # GPU 0's alert is over, GPU 1's began after its recovery
    assert retried.status is DeliveryStatus.FILTERED and "stays open for GPU 1" in retried.error
    assert pagerduty.incidents.get("afs/run-1/gpu-memory").gpus == {"1"}
    # GPU 1 alerting again after its own recovery keeps it alerting, whatever the retry.
    webhook_server.respond(UNAVAILABLE)
    recovered = builders.gpu_recovered("memory", 0.5, gpu=1, run_id="run-1")
    assert not send_now(pagerduty, recovered).delivered
    assert send_now(pagerduty, builders.gpu_memory_warning(0.97, 0.95, gpu=1, run_id="run-1")).delivered
    retried = send_now(pagerduty, recovered)
    assert retried.status is DeliveryStatus.FILTERED and retried.error.startswith(REOPENED)
    assert pagerduty.incidents.get("afs/run-1/gpu-memory").gpus == {"1"}
    assert [a for a, _ in actions(webhook_server)] == ["trigger", "resolve", "trigger", "resolve", "trigger"]


def test_an_entry_kept_before_trigger_times_were_is_still_resolved(pagerduty, webhook_server):
    pagerduty.memory.set("incident:afs/run-1/failed", '{"state": "open", "since": 1.0}')  # an older version's
    assert send_now(pagerduty, builders.training_completed("m", "run-1", 1.0)).delivered
    assert actions(webhook_server) == [("resolve", "afs/run-1/failed")]
