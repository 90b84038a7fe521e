"""Block Kit rendering: limits, escaping, and one payload snapshot per event category."""

import json
from pathlib import Path

import pytest

from afs_core import EventType, NotificationEvent
from afs_core.testing import assert_matches_snapshot, sample_events
from afs_slack.blocks import render

SNAPSHOTS = Path(__file__).parent / "snapshots"


def limit_violations(payload):
    """Every Block Kit limit from shared/reference/protocols.md, checked."""
    problems = []
    blocks = payload["blocks"] + [b for a in payload.get("attachments", []) for b in a["blocks"]]
    if len(blocks) > 50:
        problems.append(f"{len(blocks)} blocks")
    if len(payload["text"]) > 4000:
        problems.append("text over 4000")
    for block in blocks:
        if block["type"] == "header":
            if len(block["text"]["text"]) > 150 or block["text"]["type"] != "plain_text":
                problems.append("header")
        if block["type"] == "section":
            if "text" in block and len(block["text"]["text"]) > 3000:
                problems.append(f"section text {len(block['text']['text'])}")
            fields = block.get("fields", [])
            if len(fields) > 10:
                problems.append(f"{len(fields)} fields")
            problems += [f"field {len(f['text'])}" for f in fields if len(f["text"]) > 2000]
        if block["type"] == "context" and len(block["elements"]) > 10:
            problems.append("context elements")
    for text in _texts(payload):
        amp = text.rfind("&")
        if amp != -1 and ";" not in text[amp:]:
            problems.append(f"broken entity at the end of {text[-20:]!r}")
    return problems


def _texts(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "text" and isinstance(value, str):
                yield value
            else:
                yield from _texts(value)
    elif isinstance(node, list):
        for item in node:
            yield from _texts(item)


def event(event_type=EventType.TRAINING_COMPLETED, title="Training completed: m", message="done", **fields):
    fields.setdefault("model_name", "m")
    fields.setdefault("run_id", "r")
    return NotificationEvent(event_type, title, message, **fields)


def test_three_thousand_angle_brackets_are_escaped_then_cut_whole():
    payload = render(event(message="<" * 3000))
    section = payload["attachments"][0]["blocks"][0]["text"]["text"]
    assert len(section) <= 3000 and section.endswith("&lt;…") and "<" not in section
    assert not limit_violations(payload)


def test_a_ten_thousand_character_traceback_fits_every_limit():
    traceback = "Traceback (most recent call last):\n" + "\n".join(f'  File "x.py", line {i}, in f{i}' + "<>&" * 30 for i in range(300)) + "\nValueError: boom"
    payload = render(event(EventType.TRAINING_FAILED, "Training failed: m", "x" * 10_000,
                           context={"traceback": traceback}, error_details="E" * 5000))
    assert not limit_violations(payload)
    code = [b for b in payload["attachments"][0]["blocks"] if b.get("text", {}).get("text", "").startswith("```")]
    assert code and code[0]["text"]["text"].endswith("```")


def test_eleven_metrics_and_a_long_title():
    payload = render(event(title="T" * 200, metrics={f"metric_{i}": i / 7 for i in range(11)}))
    assert not limit_violations(payload)
    assert len(payload["blocks"][0]["text"]["text"]) == 150
    sections = [b for b in payload["attachments"][0]["blocks"] if "fields" in b]
    assert [len(s["fields"]) for s in sections] == [10, 3]  # model, run + 11 metrics


def test_hundreds_of_metrics_stay_within_fifty_blocks_and_say_what_was_left_out():
    payload = render(event(metrics={f"m{i}": i for i in range(1000)}))
    assert not limit_violations(payload)
    assert "more not shown" in json.dumps(payload)


def test_nan_and_infinity_are_text_and_the_payload_is_strict_json():
    payload = render(event(metrics={"loss": float("nan"), "grad": float("-inf")}))
    json.dumps(payload, allow_nan=False)
    assert "*loss*\nNaN" in json.dumps(payload).replace("\\n", "\n")


def test_fallback_text_reads_like_a_phone_notification():
    payload = render(event(message="Run r finished in 1h 00m."))
    assert payload["text"] == "✅ Training completed: m — Run r finished in 1h 00m."


@pytest.mark.parametrize("name", sorted(sample_events()))
def test_payload_snapshot(name):
    payload = render(sample_events()[name])
    assert not limit_violations(payload)
    assert_matches_snapshot(payload, SNAPSHOTS / f"{name}.json")


LOSS_CURVE = [[step, 2.31 / (1 + step / 20) + 0.41] for step in range(100)]


def test_the_loss_curve_is_a_line_of_text_under_the_message():
    payload = render(event(context={"loss_curve": LOSS_CURVE}, metrics={f"m{i}": i for i in range(1000)}))
    assert not limit_violations(payload)
    sections = [b["text"]["text"] for b in payload["attachments"][0]["blocks"] if "text" in b]
    assert sections[0] == "done" and sections[1].startswith("loss █") and sections[1].endswith(" → best 0.7982 · last 0.7982")
    assert "loss_curve" not in json.dumps(payload) and "Loss curve" not in json.dumps(payload)


def test_no_loss_line_without_a_curve_or_for_an_epoch():
    for sent in (event(), event(EventType.EPOCH_COMPLETED, context={"loss_curve": LOSS_CURVE})):
        assert "loss █" not in json.dumps(render(sent), ensure_ascii=False)
