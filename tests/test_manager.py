"""NotificationManager: the names users call, results, and never raising."""

import inspect
import logging

import pytest

from afs_core import (
    Channel,
    EventType,
    NotificationEvent,
    NotificationLevel,
    NotificationManager,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from afs_core.testing import RecordingChannel


def last_event(result):
    assert result.rejected is None, result.rejected
    return result.event


def test_seed_example_works(afs_manager, recording_channel):
    started = afs_manager.notify_training_started(
        model_name="Qwen2.5-Coder-7B", run_id="training_001", epochs=10, batch_size=4
    )
    completed = afs_manager.notify_training_completed(
        model_name="Qwen2.5-Coder-7B",
        run_id="training_001",
        duration=3600.0,
        final_loss=0.1234,
        eval_metrics={"accuracy": 0.95},
    )
    assert started and completed.ok
    event = completed.event
    assert event.event_type is EventType.TRAINING_COMPLETED
    assert event.level is NotificationLevel.SUCCESS
    assert event.context["duration"] == 3600.0 and event.context["final_loss"] == 0.1234
    assert event.metrics == {"accuracy": 0.95}
    text = recording_channel.messages[1]
    assert "1h 00m" in text and "Final loss: 0.1234" in text and "accuracy: 0.95" in text
    assert started.event.context == {"epochs": 10, "batch_size": 4}


CONVENIENCE_CALLS = {
    "notify_training_started": (("m", "r"), {}),
    "notify_training_completed": (("m", "r", 10.0), {}),
    "notify_training_failed": (("m", "r", "boom"), {}),
    "notify_training_paused": (("m", "r"), {"reason": "SIGTERM"}),
    "notify_training_resumed": (("m", "r"), {"checkpoint_path": "ckpt/3"}),
    "notify_training_stalled": (("m", "r", 1800.0), {"last_progress": "2026-12-06 12:00:00 UTC"}),
    "notify_training_progress_resumed": (("m", "r", 1900.0), {}),
    "notify_checkpoint_saved": (("m", "r"), {"checkpoint_path": "ckpt/3", "epoch": 3}),
    "notify_checkpoint_loading": (("m", "r", "ckpt/3"), {}),
    "notify_evaluation_started": (("m", "r"), {}),
    "notify_evaluation_completed": (("m", "r", {"f1": 0.9}), {}),
    "notify_evaluation_failed": (("m", "r", ValueError("bad")), {}),
    "notify_epoch_completed": (("m", "r", 2), {"metrics": {"loss": 0.3}, "total_epochs": 10}),
    "notify_batch_processed": (("m", "r", 100), {}),
    "notify_loss_improved": (("m", "r", 0.2), {"previous_loss": 0.3}),
    "notify_loss_degraded": (("m", "r", 0.4), {"previous_loss": 0.3}),
    "notify_cost_alert": ((12.5, 10.0), {"model_name": "m"}),
    "notify_gpu_memory_warning": ((0.97,), {"threshold": 0.95, "gpu": 0}),
    "notify_gpu_utilization_low": ((0.04,), {"threshold": 0.1, "gpu": 1}),
    "notify_disk_space_warning": (("/ckpt", 0.9), {"threshold": 0.85, "free_bytes": 2**30}),
    "notify_error": (("something broke",), {"model_name": "m"}),
    "notify_out_of_memory": (("m", "r", "CUDA out of memory"), {}),
    "notify_nan_detected": (("m", "r"), {"step": 12}),
}


def test_there_is_a_convenience_method_for_every_event_type():
    made = {name.removeprefix("notify_") for name in CONVENIENCE_CALLS}
    made |= {"cost_threshold_exceeded", "error_occurred"}  # named after the seed's methods
    made -= {"cost_alert", "error"}
    assert made == {t.value for t in EventType}


@pytest.mark.parametrize("method", sorted(CONVENIENCE_CALLS))
def test_convenience_method_sends_its_event_type(afs_manager, recording_channel, method):
    args, kwargs = CONVENIENCE_CALLS[method]
    result = getattr(afs_manager, method)(*args, **kwargs)
    event = last_event(result)
    expected = {
        "notify_cost_alert": EventType.COST_THRESHOLD_EXCEEDED,
        "notify_error": EventType.ERROR_OCCURRED,
    }.get(method) or EventType[method.removeprefix("notify_").upper()]
    assert event.event_type is expected
    assert event.level is expected.default_level
    assert result["recording"] is True
    assert event.title in recording_channel.messages[-1]


def test_promised_signatures():
    def sig(name):
        return list(inspect.signature(getattr(NotificationManager, name)).parameters)[1:]

    assert sig("notify_training_started") == ["model_name", "run_id", "epochs", "batch_size"]
    assert sig("notify_training_completed") == ["model_name", "run_id", "duration", "final_loss", "eval_metrics"]
    assert sig("notify_training_failed") == ["model_name", "run_id", "error"]
    assert sig("notify_cost_alert")[:3] == ["current_cost", "threshold", "model_name"]
    assert sig("notify_evaluation_completed") == ["model_name", "run_id", "metrics"]
    assert sig("notify")[:7] == ["title", "message", "event_type", "level", "model_name", "run_id", "metrics"]
    assert sig("register_handler")[:2] == ["name", "handler"]
    assert sig("send_event") == ["event"]


def test_cost_alert_carries_cost_and_threshold(afs_manager, recording_channel):
    event = last_event(afs_manager.notify_cost_alert(12.5, 10.0, model_name="m"))
    assert event.cost == 12.5 and event.context["threshold"] == 10.0
    assert "$12.50" in recording_channel.messages[-1] and "$10.00" in recording_channel.messages[-1]


def test_training_failed_keeps_a_trimmed_traceback(afs_manager, recording_channel):
    # Forty distinct frames (identical recursive frames would be collapsed by Python).
    namespace = {}
    source = "def f0():\n    raise RuntimeError('CUDA out of memory')\n"
    source += "".join(f"def f{i}():\n    f{i - 1}()\n" for i in range(1, 40))
    exec(compile(source, "train.py", "exec"), namespace)
    try:
        namespace["f39"]()
    except RuntimeError as exc:
        error = exc
    event = last_event(afs_manager.notify_training_failed("m", "r", error))
    assert event.error_details == "RuntimeError: CUDA out of memory"
    traceback = event.context["traceback"]
    assert traceback.startswith("Traceback (most recent call last):")
    assert traceback.rstrip().endswith("RuntimeError: CUDA out of memory")
    assert "lines omitted" in traceback and traceback.count("\n") < 30
    assert "RuntimeError: CUDA out of memory" in recording_channel.messages[-1]


def test_notify_accepts_context_and_event_fields(afs_manager):
    event = last_event(
        afs_manager.notify(
            "Custom", "hello", event_type="LOSS_IMPROVED", level="warning", model_name="m",
            metrics={"loss": 0.1}, epoch=3, tags=["a"], checkpoint_path="x",
        )
    )
    assert event.event_type is EventType.LOSS_IMPROVED and event.level is NotificationLevel.WARNING
    assert event.epoch == 3 and event.tags == ("a",) and event.context == {"checkpoint_path": "x"}


def test_notify_defaults_match_earlier_releases(afs_manager):
    event = last_event(afs_manager.notify("t", "m"))
    assert event.event_type is EventType.ERROR_OCCURRED and event.level is NotificationLevel.INFO


def test_result_reports_which_channels_delivered_and_why_others_failed(afs_manager):
    afs_manager.register_handler("dead", RecordingChannel(fail_with=TransientDeliveryError("HTTP 503", retry_after=2.0)))
    result = afs_manager.notify("t", "m")
    assert result.delivered == ["recording"]
    assert result.failed == {"dead": "HTTP 503"}
    assert result["recording"] is True and result["dead"] is False
    assert bool(result) is True and result.ok is False
    assert result.outcomes["dead"].retry_after == 2.0 and not result.outcomes["dead"].permanent


class Exploding(Channel):
    def format(self, event):
        raise ZeroDivisionError("formatter bug")


class Hanging(Channel):
    def deliver(self, message):
        raise ConnectionResetError("peer went away")


def test_the_manager_never_raises(afs_manager, caplog):
    afs_manager.register_handler("exploding", Exploding())
    afs_manager.register_handler("network", Hanging())
    with caplog.at_level(logging.WARNING, logger="afs"):
        result = afs_manager.notify_training_completed("m", "r", duration=1.0)
    assert result.delivered == ["recording"]
    assert result.outcomes["exploding"].permanent
    assert "ZeroDivisionError" in result.failed["exploding"]
    assert not result.outcomes["network"].permanent  # an OSError may pass
    assert "exploding" in caplog.text


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.notify(title=123, message="x"),
        lambda m: m.notify("t", "m", event_type="NOT_A_TYPE"),
        lambda m: m.send_event("not an event"),
        lambda m: m.notify_training_completed("m", "r", duration="an hour"),
        lambda m: m.notify_gpu_memory_warning("lots"),
    ],
)
def test_bad_input_is_rejected_and_logged_not_raised(afs_manager, recording_channel, caplog, call):
    with caplog.at_level(logging.ERROR, logger="afs.manager"):
        result = call(afs_manager)
    assert result.rejected and not result and not result.ok
    assert "notification rejected" in caplog.text
    assert recording_channel.messages == []


def test_one_odd_metric_does_not_cost_the_whole_message(afs_manager, recording_channel):
    result = afs_manager.notify_training_completed(
        "m", "r", duration=5.0, eval_metrics={"accuracy": 0.95, "bleu": None, "notes": ["a", "b"]}
    )
    assert result.delivered == ["recording"]
    assert dict(result.event.metrics) == {"accuracy": 0.95, "notes": "['a', 'b']"}


def test_an_exception_that_cannot_be_printed_is_still_reported(afs_manager):
    class Weird(Exception):
        def __str__(self):
            raise RuntimeError("no")

    try:
        raise Weird()
    except Weird as exc:
        result = afs_manager.notify_training_failed("m", "r", exc)
    assert result.delivered == ["recording"]
    assert result.event.error_details == "Weird: <unprintable Weird>"


def test_a_plugin_calling_sys_exit_cannot_end_the_run(afs_manager):
    from afs_core import hookimpl

    class Exits:
        @hookimpl
        def afs_format_event(self, event, channel):
            raise SystemExit(2)

    afs_manager.plugins.register(Exits(), name="exits")
    result = afs_manager.notify("t", "m")
    assert "sys.exit(2)" in result.failed["recording"]


def test_hooks_that_raise_do_not_reach_the_caller(afs_manager):
    from afs_core import hookimpl

    class Broken:
        @hookimpl
        def afs_enrich_event(self, event):
            raise RuntimeError("enricher bug")

        @hookimpl
        def afs_delivery_failed(self, event, channel, error):
            raise RuntimeError("observer bug")

    afs_manager.plugins.register(Broken(), name="broken")
    afs_manager.register_handler("dead", RecordingChannel(fail_with=PermanentDeliveryError("no")))
    result = afs_manager.notify("t", "m")
    assert result.delivered == ["recording"] and result.failed == {"dead": "no"}


def test_secrets_never_reach_results_or_logs(afs_plugins, caplog):
    class Leaky(Channel):
        def secrets(self):
            return ["s3cr3t-token"]

        def deliver(self, message):
            raise PermanentDeliveryError("POST https://hooks.example/s3cr3t-token: 403 invalid_token")

    failures = []

    from afs_core import hookimpl

    class Observer:
        @hookimpl
        def afs_delivery_failed(self, event, channel, error):
            failures.append(str(error))

    afs_plugins.register(Observer(), name="observer")
    manager = NotificationManager(plugins=afs_plugins, background=False)
    manager.register_handler("leaky", Leaky())
    with caplog.at_level(logging.DEBUG):
        result = manager.notify("t", "m")
    assert result.failed["leaky"] == "POST https://hooks.example/***: 403 invalid_token"
    assert "s3cr3t-token" not in caplog.text and "s3cr3t-token" not in failures[0]


def test_handlers_is_a_read_only_mapping(afs_manager, recording_channel):
    assert afs_manager.handlers.get("recording") is recording_channel
    assert afs_manager.handlers.get("email") is None
    with pytest.raises(TypeError):
        afs_manager.handlers["x"] = recording_channel
    assert afs_manager.unregister_handler("recording") is recording_channel
    assert dict(afs_manager.handlers) == {}


def test_register_handler_checks_its_input(afs_manager):
    with pytest.raises(TypeError):
        afs_manager.register_handler("x", object())
    with pytest.raises(ValueError):
        afs_manager.register_handler("", RecordingChannel())


def test_handlers_written_for_the_earlier_api_still_work(afs_manager):
    class OldHandler:  # the earlier NotificationHandler shape: send(event) -> bool
        def __init__(self, ok):
            self.ok, self.events = ok, []

        def send(self, event):
            self.events.append(event)
            return self.ok

        def is_configured(self):
            return True

    good, bad = OldHandler(True), OldHandler(False)
    afs_manager.register_handler("good", good)
    afs_manager.register_handler("bad", bad)
    result = afs_manager.notify("t", "m")
    assert result["good"] and not result["bad"]
    assert isinstance(good.events[0], NotificationEvent)
    assert "reported failure" in result.failed["bad"]


def test_no_channels_warns_once_and_returns_empty_result(afs_plugins, caplog):
    manager = NotificationManager(plugins=afs_plugins, background=False)
    with caplog.at_level(logging.WARNING, logger="afs.manager"):
        first, _ = manager.notify("a", "b"), manager.notify("a", "b")
    assert not first and len(first) == 0 and first.event is not None
    assert caplog.text.count("no notification channel") == 1


def test_from_env_reads_dotenv_and_real_environment_wins(afs_plugins, tmp_path, monkeypatch):
    env_file = tmp_path / "custom.env"
    env_file.write_text("AFS_CONSOLE=false\n")
    assert dict(NotificationManager.from_env(env_file, plugins=afs_plugins).handlers) == {}
    monkeypatch.setenv("AFS_CONSOLE", "true")
    assert list(NotificationManager.from_env(env_file, plugins=afs_plugins).handlers) == ["console"]


def test_from_env_finds_dotenv_in_working_directory(afs_plugins):
    with open(".env", "w") as handle:
        handle.write("AFS_CONSOLE=false\n")
    assert dict(NotificationManager.from_env(plugins=afs_plugins).handlers) == {}


def test_missing_env_file_is_a_configuration_error(afs_plugins, tmp_path):
    from afs_core.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="does not exist"):
        NotificationManager.from_env(tmp_path / "nope.env", plugins=afs_plugins)


def test_get_status_describes_channels(afs_manager):
    status = afs_manager.get_status()
    assert status["registered_handlers"] == ["recording"]
    assert status["channel_status"]["recording"]["handler_type"] == "RecordingChannel"


def test_escape_sequences_in_service_errors_do_not_reach_logs(afs_manager, caplog):
    afs_manager.register_handler(
        "remote", RecordingChannel(fail_with=PermanentDeliveryError("HTTP 400: \x1b]0;owned\x07\x1b[2Jall good"))
    )
    with caplog.at_level(logging.WARNING, logger="afs"):
        result = afs_manager.notify("t", "m")
    assert "\x1b" not in caplog.text and "\x1b" not in result.failed["remote"]
    assert result.failed["remote"] == "HTTP 400: ]0;owned[2Jall good"


def test_events_pickle_for_queues_and_processes(afs_manager):
    import copy
    import pickle

    event = last_event(afs_manager.notify("t", "m", metrics={"a": 1.0}, config={"lr": [1, 2]}))
    assert pickle.loads(pickle.dumps(event)) == event
    assert copy.deepcopy(event) == event
    with pytest.raises(TypeError):
        event.context["config"]["lr"] = 3
