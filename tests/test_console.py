import io

import pytest

from afs_core import EventType, NotificationEvent, NotificationManager, send_now
from afs_core.default_plugins.console import ConsoleChannel
from afs_core.errors import ConfigurationError


class FakeTty(io.StringIO):
    def isatty(self):
        return True


def _event(**fields):
    return NotificationEvent(
        EventType.TRAINING_COMPLETED,
        fields.pop("title", "Training completed: m"),
        fields.pop("message", "Run r finished."),
        model_name="m",
        run_id="r",
        metrics={"accuracy": 0.95},
        **fields,
    )


def test_console_writes_readable_plain_text_when_not_a_terminal(afs_plugins):
    stream = io.StringIO()
    channel = ConsoleChannel(stream=stream)
    assert send_now(channel, _event()).delivered
    out = stream.getvalue()
    assert out.startswith("[afs] ✅ SUCCESS Training completed: m\n")
    assert "Run r finished." in out and "accuracy: 0.95" in out
    assert "\033[" not in out


def test_console_colours_a_terminal(afs_plugins, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    stream = FakeTty()
    send_now(ConsoleChannel(stream=stream), _event())
    assert "\033[32m" in stream.getvalue()


def test_no_color_turns_colour_off(afs_plugins, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    stream = FakeTty()
    send_now(ConsoleChannel(stream=stream), _event())
    assert "\033[" not in stream.getvalue()


def test_hostile_text_cannot_drive_the_terminal(afs_plugins):
    stream = io.StringIO()
    send_now(ConsoleChannel(stream=stream),
        _event(title="x\x1b[2J\rfake line", message="a\x1b]0;title\x07b")
    )
    out = stream.getvalue()
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out


def test_console_writes_to_current_stderr(afs_plugins, capsys):
    send_now(ConsoleChannel(), _event())
    assert "Training completed: m" in capsys.readouterr().err


def test_closed_stream_is_a_failure_not_a_crash(afs_plugins):
    stream = io.StringIO()
    stream.close()
    outcome = send_now(ConsoleChannel(stream=stream), _event())
    assert not outcome.delivered and "console stream unavailable" in outcome.error


@pytest.mark.parametrize(("raw", "on"), [("true", True), ("1", True), ("false", False), ("", False)])
def test_afs_console_setting(raw, on):
    assert (ConsoleChannel.from_env({"AFS_CONSOLE": raw}) is not None) is on


def test_bad_afs_console_setting_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="AFS_CONSOLE"):
        ConsoleChannel.from_env({"AFS_CONSOLE": "maybe"})


def test_console_is_the_fallback_when_nothing_is_configured(afs_plugins):
    manager = NotificationManager.from_env(plugins=afs_plugins)
    assert list(manager.handlers) == ["console"]
