"""What reaches PagerDuty: exact trigger and resolve bodies, dedup keys, limits, hostile text."""

import datetime as dt
import json
from pathlib import Path

import pytest

from afs_core import send_now
from afs_core.events import EventType, NotificationEvent, NotificationLevel
from afs_core.source import Source
from afs_core.testing import assert_matches_snapshot, sample_events, would_send
from afs_pagerduty import keys, payload

WHEN = dt.datetime(2026, 11, 27, 12, 0, 5, 250000, tzinfo=dt.timezone.utc)
SOURCE = Source(host="gpu-01", pid=4242, rank=3, world_size=8)


def failure(**fields):
    fields = {"model_name": "llama-7b", "run_id": "run-42", "timestamp": WHEN, "event_id": "e" * 32,
              "source": SOURCE, **fields}
    return NotificationEvent(EventType.TRAINING_FAILED, fields.pop("title", "Training failed: llama-7b"),
                             fields.pop("message", "Run run-42 failed: ValueError: boom"), **fields)


def test_the_exact_trigger_body(pagerduty, webhook_server, routing_key):
    event = failure(error_details="ValueError: boom", cost=12.5, epoch=3, metrics={"loss": 0.25, "acc": 0.9},
                    context={"traceback": 'Traceback (most recent call last):\n  File "t.py", line 1\nValueError: boom',
                             "exit_code": 1})
    assert send_now(pagerduty, event).delivered
    assert webhook_server.received[0].path == "/v2/enqueue"
    assert webhook_server.received[0].json == {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": "afs/run-42/failed",
        "payload": {
            "summary": "Training failed: llama-7b — Run run-42 failed: ValueError: boom",
            "source": "gpu-01",
            "severity": "error",
            "timestamp": "2026-11-27T12:00:05.250000+00:00",
            "class": "training_failed",
            "component": "llama-7b",
            "group": "run-42",
            "custom_details": {
                "message": "Run run-42 failed: ValueError: boom",
                "error": "ValueError: boom",
                "run_id": "run-42",
                "model": "llama-7b",
                "epoch": 3,
                "cost": 12.5,
                "metrics": {"loss": 0.25, "acc": 0.9},
                "rank": 3,
                "world_size": 8,
                "host": "gpu-01",
                "pid": 4242,
                "context": {"exit_code": 1},
                "traceback": 'Traceback (most recent call last):\n  File "t.py", line 1\nValueError: boom',
                "event_id": "e" * 32,
            },
        },
        "client": "AFS notifications",
    }
    headers = webhook_server.received[0].headers
    assert headers["Content-Type"].startswith("application/json") and headers["User-Agent"] == "afs-pagerduty"


def test_the_exact_resolve_body(pagerduty, webhook_server, routing_key):
    send_now(pagerduty, failure())
    done = failure().evolve(event_type=EventType.TRAINING_COMPLETED, level=NotificationLevel.SUCCESS)
    assert send_now(pagerduty, done).delivered
    assert webhook_server.received[1].json == {
        "routing_key": routing_key, "event_action": "resolve", "dedup_key": "afs/run-42/failed"}


def test_the_routing_key_is_added_at_sending_never_in_the_rendered_message(pagerduty, routing_key):
    assert routing_key not in json.dumps(would_send(pagerduty, failure()))


@pytest.mark.parametrize(
    ("level", "severity"),
    [("critical", "critical"), ("error", "error"), ("warning", "warning"), ("info", "info"), ("success", "info")],
)
def test_severity_follows_the_level(level, severity):
    assert payload.trigger(failure(level=level), "k")["payload"]["severity"] == severity


@pytest.mark.parametrize(
    ("event_type", "key"),
    [
        (EventType.TRAINING_FAILED, "afs/run-42/failed"),
        (EventType.OUT_OF_MEMORY, "afs/run-42/failed"),  # the run died: the same incident as any crash
        (EventType.NAN_DETECTED, "afs/run-42/nan"),
        (EventType.GPU_MEMORY_WARNING, "afs/run-42/gpu-memory"),
        (EventType.GPU_UTILIZATION_LOW, "afs/run-42/gpu-utilization"),
        (EventType.COST_THRESHOLD_EXCEEDED, "afs/run-42/cost"),
        (EventType.ERROR_OCCURRED, "afs/run-42/error"),
        (EventType.EVALUATION_FAILED, "afs/run-42/evaluation-failed"),
        (EventType.DISK_SPACE_WARNING, "afs/run-42/disk"),
        (EventType.LOSS_DEGRADED, "afs/run-42/loss-degraded"),
    ],
)
def test_the_dedup_key_names_the_run_and_the_kind_of_trouble(event_type, key):
    assert keys.dedup_key(failure().evolve(event_type=event_type)) == key


def test_an_event_without_a_run_id_is_keyed_by_its_host():
    event = failure(run_id=None)
    assert keys.dedup_key(event) == "afs-host/gpu-01/failed"
    assert keys.dedup_key(failure(run_id=None, source=Source(host=""))) == "afs-host/unknown-host/failed"
    assert "group" not in payload.trigger(event, "k")["payload"]


@pytest.mark.parametrize("run_id", ["r" * 300, "é" * 200, "🚀" * 100, "x" * 231, "ab\x00\x1b[2Jcd", "run\u202e42"])
def test_a_long_or_unprintable_run_id_is_shortened_deterministically(run_id):
    every = [keys.dedup_key(failure(run_id=run_id).evolve(event_type=t)) for t in EventType
             if t not in keys.RECOVERY_TYPES]
    assert all(len(key.encode("utf-8")) <= 255 for key in every)
    assert keys.dedup_key(failure(run_id=run_id)) == keys.dedup_key(failure(run_id=run_id, message="again"))
    assert keys.dedup_key(failure(run_id=run_id)) != keys.dedup_key(failure(run_id=run_id + "1"))
    assert all(ch.isprintable() for ch in keys.dedup_key(failure(run_id=run_id)))


def test_a_run_id_that_fits_is_kept_as_it_is_up_to_the_limit():
    room = 255 - len("afs-host/") - 1 - max(len(kind) for kind in keys.TRIGGER_KINDS)
    assert keys.dedup_key(failure(run_id="x" * room)) == f"afs/{'x' * room}/failed"
    over = keys.dedup_key(failure(run_id="x" * (room + 1)))
    assert over.startswith("afs/xxx") and "~" in over and len(over) <= 255
    multi = "é" * (room // 2)  # two bytes each: exactly at the limit
    assert keys.dedup_key(failure(run_id=multi)) == f"afs/{multi}/failed"
    assert "~" in keys.dedup_key(failure(run_id=multi + "é"))


@pytest.mark.parametrize("size", [1023, 1024, 1025, 100_000])
def test_the_summary_fits_1024_characters_with_multibyte_text(size):
    text = ("日本語🚀" * size)[:size]
    summary = payload.trigger(failure(title=text, message=""), "k")["payload"]["summary"]
    assert len(summary) == min(size, 1024)
    assert summary.endswith("…") == (size > 1024)


def test_hostile_text_arrives_intact_or_cut_within_the_limits(pagerduty, webhook_server):
    templates = "{{ .Values.secret }} ${HOME} $(id) `rm -rf` {% raw %} <script>alert(1)</script> @here"
    hostile = f"line1\r\nline2\x1b[2J\x07\x00 \u202eevil\u202c \u200fRLM {templates} 🚀✅👨‍👩‍👧"
    message = hostile + " " + "m" * 100_000
    event = failure(title=f"Failed {hostile}", message=message, error_details="E" * 5000,
                    metrics={f"m{i}": float(i) for i in range(60)} | {"nan": float("nan"), "inf": float("inf")},
                    tags=[templates], context={"traceback": "Traceback\n" + "  frame\n" * 5000 + "Boom: " + hostile})
    assert send_now(pagerduty, event).delivered
    raw = webhook_server.received[0].body
    assert len(raw) < 512 * 1024
    json.loads(raw, parse_constant=lambda c: pytest.fail(f"bare {c} is not JSON"))
    body = json.loads(raw)["payload"]
    summary = body["summary"]
    assert len(summary) == 1024 and summary.endswith("…")
    assert summary.startswith("Failed line1 line2[2J evil RLM " + templates + " 🚀✅👨‍👩‍👧 — line1")
    details = body["custom_details"]
    assert details["message"].startswith("line1\nline2[2J evil RLM " + templates + " 🚀✅👨‍👩‍👧 mmm")
    assert len(details["message"]) == payload.MESSAGE_LIMIT and details["message"].endswith("…")
    assert len(details["error"]) == payload.DETAIL_LIMIT
    assert details["tags"] == [templates]
    assert details["metrics"]["m0"] == 0.0 and len(details["metrics"]) == payload.MAX_ENTRIES + 1
    assert details["metrics"]["…"] == "12 more not shown"
    assert len(details["traceback"]) <= payload.TRACEBACK_LIMIT and "Boom:" in details["traceback"]
    for text in (summary, details["message"], details["traceback"]):
        assert not any(ch in text for ch in "\r\x1b\x07\x00\u202e\u202c\u200f")


def test_nan_and_infinity_are_text_never_bare_json():
    body = payload.trigger(failure(metrics={"loss": float("nan"), "grad": float("-inf"), "lr": 1e-4},
                                   context={"best": float("inf")}), "k")
    details = body["payload"]["custom_details"]
    assert details["metrics"] == {"loss": "NaN", "grad": "-inf", "lr": 1e-4} and details["context"] == {"best": "inf"}
    json.dumps(body, allow_nan=False)


def test_a_run_link_from_an_enrich_hook_becomes_a_pagerduty_link():
    body = payload.trigger(failure(context={"wandb_url": "https://wandb.ai/team/run-42",
                                            "evil_url": "javascript:alert(1)"}), "k")
    assert body["links"] == [{"href": "https://wandb.ai/team/run-42", "text": "wandb url"}]


def test_merged_ranks_are_named_in_the_details():
    details = payload.details(failure(context={"ranks": "0, 1, 2"}))
    assert details["ranks"] == "0, 1, 2" and "context" not in details


@pytest.mark.parametrize("name", sorted(set(sample_events()) - {"training_completed"}))
def test_trigger_snapshot(pagerduty, name):
    pagerduty.min_level = NotificationLevel.INFO  # every sample, as a user who lowered the level sees it
    assert_matches_snapshot(pagerduty.format(sample_events()[name]),
                            Path(__file__).parent / "snapshots" / f"{name}.json")


def test_a_completed_run_renders_as_the_keys_it_may_resolve(pagerduty):
    message = pagerduty.format(sample_events()["training_completed"])
    assert message["event_action"] == "resolve" and message["about"] == "run r"
    assert message["dedup_keys"] == [f"afs/r/{kind}" for kind in keys.TRIGGER_KINDS]
    assert "afs/r/failed" in message["dedup_keys"] and "afs/r/gpu-memory" in message["dedup_keys"]
