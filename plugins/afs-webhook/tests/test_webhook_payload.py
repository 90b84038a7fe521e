"""The afs.event/1 body: its shipped JSON Schema, its snapshots, its limits."""

import datetime as dt
import json
from pathlib import Path

import jsonschema
import pytest

from afs_core import EventType
from afs_core.testing import assert_matches_snapshot, sample_events
from afs_webhook import SCHEMA, load_schema
from afs_webhook.payload import (
    BODY_LIMIT,
    MESSAGE_LIMIT,
    TITLE_LIMIT,
    encode,
    fit_text,
    rfc3339,
    to_payload,
    webhook_id,
)

SNAPSHOTS = Path(__file__).parent / "snapshots"


@pytest.fixture(scope="module")
def validator():
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def _valid(validator, payload):
    errors = sorted(validator.iter_errors(json.loads(encode(payload))), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


@pytest.mark.parametrize("name", sorted(sample_events()))
def test_every_sample_event_is_valid_against_the_shipped_schema(validator, name):
    _valid(validator, to_payload(sample_events()[name]))


@pytest.mark.parametrize("name", sorted(sample_events()))
def test_payload_snapshot(name):
    assert_matches_snapshot(to_payload(sample_events()[name]), SNAPSHOTS / f"{name}.json")


def test_the_schema_names_exactly_the_fields_sent_and_requires_them_all():
    schema = load_schema()
    payload = to_payload(sample_events()["training_completed"])
    assert list(schema["properties"]) == list(payload) == schema["required"]
    assert schema["properties"]["schema"]["const"] == SCHEMA == payload["schema"] == "afs.event/1"


def test_the_schema_is_package_data_read_from_the_installed_package():
    import afs_webhook

    path = Path(afs_webhook.__file__).parent / "schemas" / "afs.event.1.json"
    assert json.loads(path.read_text(encoding="utf-8")) == load_schema()


def test_every_event_type_and_level_fits_the_schema(validator, make_event):
    for event_type in EventType:
        _valid(validator, to_payload(make_event(event_type, title=event_type.value)))


def test_the_schema_catches_a_wrong_body(validator):
    payload = to_payload(sample_events()["error_nan"])
    for field, wrong in [("level", "loud"), ("timestamp", "yesterday"), ("metrics", {"loss": None}), ("id", ""),
                         ("schema", "afs.event/2")]:
        with pytest.raises(jsonschema.ValidationError):
            validator.validate({**payload, field: wrong})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({k: v for k, v in payload.items() if k != "run_id"})


def test_hostile_and_odd_values_still_give_a_valid_body(validator, make_event):
    class Weird:
        def __str__(self):
            return "weird ${x}"

    class Broken:
        def __str__(self):
            raise RuntimeError("no")

    event = make_event(
        title="\u202e\x00{{ x }}", message="\ud800 lone", metrics={"loss": float("inf"), "lr": float("-inf"), "n": 3,
                                                                    "note": "text"},
        context={"when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), "set": {3, 1, 2}, "obj": Weird(),
                 "broken": Broken(), "bytes": b"\x00raw", "deep": _nested(40), "huge": 10**30, "none": None},
    )
    payload = to_payload(event)
    _valid(validator, payload)
    assert payload["title"] == "\u202e\x00{{ x }}"
    assert payload["message"] == "\ufffd lone"
    assert payload["metrics"] == {"loss": "Infinity", "lr": "-Infinity", "n": 3, "note": "text"}
    context = payload["context"]
    assert context["when"] == "2026-01-02T03:04:05Z" and context["set"] == [1, 2, 3]
    assert context["obj"] == "weird ${x}" and context["broken"] == "<Broken>" and context["bytes"] == "b'\\x00raw'"
    assert context["huge"] == 10**30 and context["none"] is None
    assert _depth_of(context["deep"]) < 40 and _deepest(context["deep"]).startswith("{'d': {'d'")  # nesting kept, then text
    json.loads(encode(payload), parse_constant=lambda c: pytest.fail(f"bare {c}"))


def _nested(levels):
    value = {"leaf": 1}
    for _ in range(levels):
        value = {"d": value}
    return value


def _depth_of(value):
    depth = 0
    while isinstance(value, dict) and "d" in value:
        value, depth = value["d"], depth + 1
    return depth


def _deepest(value):
    while isinstance(value, dict):
        value = value.get("d", value.get("leaf"))
    return value


@pytest.mark.parametrize(
    ("text", "limit", "expected", "cut"),
    [
        ("é" * 512, 1024, "é" * 512, False),  # exactly 1024 bytes: kept whole
        ("é" * 512 + "a", 1024, "é" * 510 + "…", True),  # one byte over: 1020 + 3 bytes
        ("🚀" * 256, 1024, "🚀" * 256, False),
        ("🚀" * 257, 1024, "🚀" * 255 + "…", True),  # 1020 bytes left: 255 rockets, not a broken 256th
        ("a" * 1024, 1024, "a" * 1024, False),
        ("a" * 1025, 1024, "a" * 1021 + "…", True),
        ("€€€", 5, "…", True),  # room for the marker only
    ],
)
def test_texts_are_cut_by_utf8_bytes_at_a_character_boundary(text, limit, expected, cut):
    assert fit_text(text, limit) == (expected, cut)


@pytest.mark.parametrize(("size", "cut"), [(MESSAGE_LIMIT, False), (MESSAGE_LIMIT + 1, True)])
def test_the_message_limit_at_and_just_over_it(validator, make_event, size, cut):
    message = "€" * (size // 3) + "x" * (size % 3)  # multi-byte text of exactly `size` bytes
    payload = to_payload(make_event(message=message))
    assert len(payload["message"].encode()) <= MESSAGE_LIMIT
    assert (payload["message"] != message) is cut and (payload["truncated"] == ["/message"]) is cut
    _valid(validator, payload)


@pytest.mark.parametrize(("size", "cut"), [(TITLE_LIMIT, False), (TITLE_LIMIT + 1, True)])
def test_the_title_limit_at_and_just_over_it(make_event, size, cut):
    title = "ж" * (size // 2) + "x" * (size % 2)
    payload = to_payload(make_event(title=title))
    assert len(payload["title"].encode()) <= TITLE_LIMIT and (payload["title"] != title) is cut
    assert ("/title" in payload["truncated"]) is cut


def test_a_huge_context_keeps_the_body_within_its_limit(validator, make_event):
    context = {f"k{i}": "v" * 60_000 for i in range(20)}  # 1.2 MB of context
    payload = to_payload(make_event(context=context, message="m" * 100_000))
    assert len(encode(payload)) <= BODY_LIMIT
    assert all(len(v) <= 4096 for v in payload["context"].values())  # cut tighter, not dropped
    assert "/message" in payload["truncated"] and "/context/k0" in payload["truncated"]
    _valid(validator, payload)
    many = {f"k{i}": "v" * 3000 for i in range(400)}  # still too big at 4 KiB a string: left out
    payload = to_payload(make_event(context=many))
    assert payload["context"] == {} and payload["truncated"] == ["/context"] and len(encode(payload)) <= BODY_LIMIT


def test_timestamps_are_rfc3339_utc():
    plus_two = dt.timezone(dt.timedelta(hours=2))
    assert rfc3339(dt.datetime(2026, 11, 27, 14, 0, tzinfo=plus_two)) == "2026-11-27T12:00:00Z"
    assert rfc3339(dt.datetime(2026, 11, 27, 12, 0, 0, 5, tzinfo=dt.timezone.utc)) == "2026-11-27T12:00:00.000005Z"


def test_the_webhook_id_is_the_event_id_or_a_stable_header_safe_one():
    assert webhook_id({"id": "a" * 32}, b"{}") == "a" * 32
    unsafe = webhook_id({"id": "x\r\nInjected: 1"}, b"{}")
    assert unsafe.startswith("afs_") and unsafe == webhook_id({"id": "x\r\nInjected: 1"}, b"other")
    assert webhook_id({}, b'{"a": 1}') == webhook_id({}, b'{"a": 1}') != webhook_id({}, b'{"a": 2}')
    assert webhook_id({"id": "b" * 200}, b"{}").startswith("afs_")
