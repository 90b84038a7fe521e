"""Event builders: pure functions, the one place titles and messages are written."""

import inspect

import pytest

from afs_core import EventType, NotificationLevel, NotificationManager, builders


def test_each_notify_method_is_its_builder_with_the_same_parameters():
    for name in dir(NotificationManager):
        if not name.startswith("notify"):
            continue
        build = builders.custom if name == "notify" else getattr(builders, name.removeprefix("notify_"))
        method = inspect.signature(getattr(NotificationManager, name))
        assert list(method.parameters)[1:] == list(inspect.signature(build).parameters), name
        assert method.return_annotation == "NotifyResult"


def test_a_builder_returns_the_event_and_sends_nothing():
    event = builders.training_completed("m", "run-1", 3600.0, final_loss=0.1234, eval_metrics={"acc": 0.9, "x": None})
    assert event.event_type is EventType.TRAINING_COMPLETED and event.level is NotificationLevel.SUCCESS
    assert event.title == "Training completed: m" and event.message == "Run run-1 finished in 1h 00m, final loss 0.1234."
    assert dict(event.metrics) == {"acc": 0.9} and event.context["duration"] == 3600.0


@pytest.mark.parametrize("kind, value, event_type, title", [
    ("memory", 0.5, EventType.GPU_MEMORY_WARNING, "GPU 1 memory back to 50%"),
    ("utilization", 0.8, EventType.GPU_UTILIZATION_LOW, "GPU 1 busy again at 80%"),
])
def test_a_gpu_recovery_names_its_kind_rather_than_guessing_from_the_title(kind, value, event_type, title):
    event = builders.gpu_recovered(kind, value, gpu=1)
    assert (event.event_type, event.level, event.title) == (event_type, NotificationLevel.SUCCESS, title)
    with pytest.raises(ValueError):
        builders.gpu_recovered("temperature", 0.9)


def test_a_command_that_died_carries_its_exit_signal_and_last_lines():
    event = builders.command_failed("train.py", "r", "was killed by SIGKILL, most likely the out-of-memory killer",
                                    exit_code=137, signal="SIGKILL", duration=12.5, tail=["step 9", "Killed"])
    assert event.event_type is EventType.TRAINING_FAILED and event.error_details.startswith("was killed by SIGKILL")
    assert event.context["exit_code"] == 137 and event.context["signal"] == "SIGKILL"
    assert event.context["traceback"] == "step 9\nKilled"


def test_bad_input_raises_in_the_builder_and_is_a_rejected_result_in_the_manager(afs_manager):
    with pytest.raises(TypeError):
        builders.custom(123)
    result = afs_manager.notify(123)
    assert result.rejected.startswith("TypeError") and not result
