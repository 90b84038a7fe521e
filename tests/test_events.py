import datetime as dt
import math

import pytest

from afs_core import EventCategory, EventType, NotificationEvent, NotificationLevel
from afs_core.events import _EVENT_TYPE_TABLE
from afs_core.source import forget_current_source

EXPECTED_TYPES = """TRAINING_STARTED TRAINING_COMPLETED TRAINING_FAILED TRAINING_PAUSED
TRAINING_RESUMED TRAINING_STALLED TRAINING_PROGRESS_RESUMED CHECKPOINT_SAVED CHECKPOINT_LOADING EVALUATION_STARTED EVALUATION_COMPLETED
EVALUATION_FAILED EPOCH_COMPLETED BATCH_PROCESSED LOSS_IMPROVED LOSS_DEGRADED
COST_THRESHOLD_EXCEEDED GPU_MEMORY_WARNING GPU_UTILIZATION_LOW DISK_SPACE_WARNING
ERROR_OCCURRED OUT_OF_MEMORY NAN_DETECTED""".split()


def test_event_type_has_exactly_the_documented_members():
    assert [member.name for member in EventType] == EXPECTED_TYPES
    assert set(_EVENT_TYPE_TABLE) == {member.value for member in EventType}


@pytest.mark.parametrize(
    ("event_type", "category", "level"),
    [
        (EventType.TRAINING_STARTED, EventCategory.TRAINING, NotificationLevel.INFO),
        (EventType.TRAINING_COMPLETED, EventCategory.TRAINING, NotificationLevel.SUCCESS),
        (EventType.TRAINING_FAILED, EventCategory.TRAINING, NotificationLevel.ERROR),
        (EventType.TRAINING_STALLED, EventCategory.TRAINING, NotificationLevel.WARNING),
        (EventType.TRAINING_PROGRESS_RESUMED, EventCategory.TRAINING, NotificationLevel.INFO),
        (EventType.CHECKPOINT_SAVED, EventCategory.CHECKPOINT, NotificationLevel.INFO),
        (EventType.EVALUATION_FAILED, EventCategory.EVALUATION, NotificationLevel.ERROR),
        (EventType.LOSS_DEGRADED, EventCategory.MILESTONE, NotificationLevel.WARNING),
        (EventType.COST_THRESHOLD_EXCEEDED, EventCategory.RESOURCE, NotificationLevel.WARNING),
        (EventType.OUT_OF_MEMORY, EventCategory.ERROR, NotificationLevel.CRITICAL),
        (EventType.NAN_DETECTED, EventCategory.ERROR, NotificationLevel.ERROR),
    ],
)
def test_each_event_type_knows_category_and_default_level(event_type, category, level):
    assert event_type.category is category
    assert event_type.default_level is level


def test_every_category_is_used():
    assert {t.category for t in EventType} == set(EventCategory)


def test_levels_are_ordered():
    levels = list(NotificationLevel)
    assert levels == sorted(levels)
    assert NotificationLevel.CRITICAL >= NotificationLevel.ERROR
    assert NotificationLevel.WARNING < NotificationLevel.ERROR
    assert not NotificationLevel.INFO > NotificationLevel.SUCCESS
    assert max(levels) is NotificationLevel.CRITICAL
    with pytest.raises(TypeError):
        NotificationLevel.INFO < 3  # noqa: B015


def test_levels_and_types_parse_from_settings_text():
    assert NotificationLevel("WARNING") is NotificationLevel.WARNING
    assert NotificationLevel(" error ") is NotificationLevel.ERROR
    assert EventType("LOSS_IMPROVED") is EventType.LOSS_IMPROVED


def test_event_level_defaults_to_the_type_default():
    event = NotificationEvent(EventType.OUT_OF_MEMORY, "OOM", "boom")
    assert event.level is NotificationLevel.CRITICAL
    explicit = NotificationEvent(EventType.OUT_OF_MEMORY, "OOM", "boom", level="warning")
    assert explicit.level is NotificationLevel.WARNING


def test_event_carries_utc_timestamp_unique_id_and_source(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    forget_current_source()  # read once per process; this test changes it mid-way
    first = NotificationEvent(EventType.TRAINING_STARTED, "a", "b")
    second = NotificationEvent(EventType.TRAINING_STARTED, "a", "b")
    assert first.timestamp.tzinfo is not None
    assert first.timestamp.utcoffset() == dt.timedelta(0)
    assert first.event_id != second.event_id
    assert first.source.rank == 3 and first.source.world_size == 8
    assert first.source.host and first.source.pid > 0
    assert not first.source.is_main_process


def test_event_is_immutable():
    event = NotificationEvent(EventType.TRAINING_STARTED, "a", "b", metrics={"loss": 1.0}, tags=["x"])
    with pytest.raises(AttributeError):  # dataclasses.FrozenInstanceError
        event.title = "changed"
    with pytest.raises(TypeError):
        event.metrics["loss"] = 2.0
    assert event.tags == ("x",)


def test_event_copies_caller_dicts():
    metrics = {"loss": 1.0}
    event = NotificationEvent(EventType.EPOCH_COMPLETED, "a", "b", metrics=metrics)
    metrics["loss"] = 99.0
    assert event.metrics["loss"] == 1.0


@pytest.mark.parametrize(
    ("fields", "error", "names"),
    [
        ({"title": 3}, TypeError, "title"),
        ({"title": "t", "message": None}, TypeError, "message"),
        ({"title": "t", "level": "loud"}, ValueError, "level"),
        ({"title": "t", "event_type": "BOGUS"}, ValueError, "event_type"),
        ({"title": "t", "event_type": 7}, TypeError, "event_type"),
        ({"title": "t", "metrics": {"acc": [1]}}, TypeError, "metrics['acc']"),
        ({"title": "t", "metrics": [1, 2]}, TypeError, "metrics"),
        ({"title": "t", "epoch": "3"}, TypeError, "epoch"),
        ({"title": "t", "epoch": -1}, ValueError, "epoch"),
        ({"title": "t", "cost": "12"}, TypeError, "cost"),
        ({"title": "t", "cost": math.inf}, ValueError, "cost"),
        ({"title": "t", "tags": "one-string"}, TypeError, "tags"),
        ({"title": "t", "model_name": 5}, TypeError, "model_name"),
        ({"title": "t", "timestamp": dt.datetime(2026, 1, 1)}, ValueError, "timestamp"),
    ],
)
def test_wrong_input_gets_a_clear_error_naming_the_field(fields, error, names):
    fields = dict(fields)
    event_type = fields.pop("event_type", EventType.TRAINING_STARTED)
    title = fields.pop("title")
    with pytest.raises(error) as info:
        NotificationEvent(event_type, title, fields.pop("message", "m"), **fields)
    assert names in str(info.value)


def test_nan_and_infinity_in_metrics_are_kept():
    event = NotificationEvent(
        EventType.NAN_DETECTED, "NaN", "x", metrics={"loss": math.nan, "grad": -math.inf}
    )
    assert math.isnan(event.metrics["loss"])
    assert event.metrics["grad"] == -math.inf


def test_metric_scalars_from_other_libraries_become_floats():
    class Scalar:  # numpy and torch scalars expose __float__
        def __float__(self):
            return 0.5

    event = NotificationEvent(EventType.EPOCH_COMPLETED, "a", "b", metrics={"acc": Scalar(), "ok": True})
    assert event.metrics == {"acc": 0.5, "ok": 1}
    assert type(event.metrics["acc"]) is float


def test_to_dict_round_trips():
    event = NotificationEvent(
        EventType.TRAINING_COMPLETED,
        "done",
        "fine",
        model_name="m",
        run_id="r",
        epoch=2,
        batch=5,
        cost=1.5,
        metrics={"acc": 0.9},
        tags=["a"],
        context={"duration": 3.0},
        error_details=None,
    )
    data = event.to_dict()
    assert data["event_type"] == "training_completed" and data["level"] == "success"
    assert NotificationEvent.from_dict(data) == event


def test_evolve_keeps_identity_fields():
    event = NotificationEvent(EventType.TRAINING_STARTED, "a", "b")
    changed = event.evolve(title="c")
    assert changed.title == "c"
    assert (changed.event_id, changed.timestamp) == (event.event_id, event.timestamp)
