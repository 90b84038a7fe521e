"""The desktop channel: real D-Bus on Linux; exact commands for macOS and Windows."""

import time

import pytest

from afs_core import EventType, NotificationLevel, NotificationManager
from afs_core.plugins import PluginHost
from afs_desktop import DesktopNotifier
from afs_desktop.backends import commands
from afs_desktop.backends.commands import (
    POWERSHELL_TOAST,
    osascript_invocation,
    powershell_invocation,
)
from afs_desktop.backends.freedesktop import FreedesktopBackend
from afs_desktop.message import DesktopMessage, compose


def test_entry_point_offers_the_desktop_channel():
    spec = PluginHost(allow={"desktop"}, strict=True).channels["desktop"]
    assert spec.channel_class is DesktopNotifier and spec.distribution == "afs-desktop"


def test_seed_import_path():
    from afs.notifications import DesktopNotifier as Seed

    assert Seed is DesktopNotifier


# -- Linux, for real: a private session bus and a recording notification server ----


def test_notify_call_carries_summary_escaped_body_urgency_app_and_expiry(notification_server, afs_plugins, make_event):
    notifier = DesktopNotifier(enable_sound=True, app_name="AFS")
    assert notifier.send(make_event(message="<b>x</b> & y", metrics={"accuracy": 0.954321},
                                    context={"duration": 3600.0}))
    app, replaces, icon, summary, body, actions, hints, expire = notification_server.calls[0]
    assert (app, replaces, icon, actions) == ("AFS", 0, "", [])
    assert summary == "✅ Training completed: tiny-model"
    assert body == "&lt;b&gt;x&lt;/b&gt; &amp; y\nDuration: 1h 00m · accuracy: 0.9543"
    assert hints["urgency"] == ("y", 1) and hints["sound-name"] == ("s", "message-new-instant")
    assert expire == -1


@pytest.mark.parametrize(
    ("level", "urgency", "expire"),
    [(NotificationLevel.INFO, 1, -1), (NotificationLevel.WARNING, 1, -1),
     (NotificationLevel.ERROR, 2, 0), (NotificationLevel.CRITICAL, 2, 0)],
)
def test_urgency_follows_the_level(notification_server, afs_plugins, make_event, level, urgency, expire):
    DesktopNotifier(enable_sound=False).send(make_event(EventType.ERROR_OCCURRED, "t", "m", level=level))
    *_, hints, sent_expire = notification_server.calls[0]
    assert hints["urgency"] == ("y", urgency) and sent_expire == expire
    assert hints["suppress-sound"] == ("b", True)


def test_notify_simple_and_the_manager(notification_server, afs_plugins, monkeypatch):
    assert DesktopNotifier(app_name="AFS").notify_simple(title="Training Complete", message="Model trained successfully")
    monkeypatch.setenv("DESKTOP_NOTIFICATIONS_ENABLED", "true")
    manager = NotificationManager.from_env(plugins=PluginHost(allow={"desktop"}))
    assert list(manager.handlers) == ["desktop"]
    result = manager.notify_training_failed("m", "r", "CUDA out of memory")
    assert result.wait(5) and result["desktop"]  # delivered by the background engine
    manager.close()
    assert [call[3] for call in notification_server.calls] == ["ℹ️ Training Complete", "❌ Training failed: m"]


def test_long_text_is_cut_for_the_platform(notification_server, afs_plugins, make_event):
    DesktopNotifier().send(make_event(title="T" * 500, message="line one\nline two\nline three\n" + "x" * 1000))
    summary, body = notification_server.calls[0][3:5]
    assert len(summary) <= 100 and summary.endswith("…")
    assert body == "line one\nline two"  # two lines of message, nothing more


def test_no_session_bus_fails_fast_with_a_reason(no_session_bus, afs_plugins, make_event, monkeypatch):
    monkeypatch.setenv("PATH", "")  # and no notify-send to fall back on
    notifier = DesktopNotifier()
    started = time.monotonic()
    outcome = notifier.send_with_outcome(make_event())
    assert time.monotonic() - started < 1.0
    assert not outcome.delivered and "no D-Bus session bus" in outcome.error


def test_a_bus_without_a_notification_server_fails_fast(session_bus, afs_plugins, make_event, monkeypatch):
    monkeypatch.setenv("PATH", "")
    started = time.monotonic()
    outcome = DesktopNotifier().send_with_outcome(make_event())
    assert time.monotonic() - started < 1.0
    assert not outcome.delivered and "no notification server" in outcome.error


def test_from_env_registers_nothing_where_no_backend_works(session_bus, monkeypatch, caplog):
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv("DESKTOP_NOTIFICATIONS_ENABLED", "true")
    assert DesktopNotifier.from_env({"DESKTOP_NOTIFICATIONS_ENABLED": "true"}) is None
    assert "unavailable here" in caplog.text
    manager = NotificationManager.from_env(plugins=PluginHost(allow={"desktop"}))
    assert "desktop" not in manager.handlers


def test_from_env_respects_the_switches(notification_server):
    assert DesktopNotifier.from_env({}) is None
    assert DesktopNotifier.from_env({"DESKTOP_NOTIFICATIONS_ENABLED": "false"}) is None
    notifier = DesktopNotifier.from_env({"DESKTOP_NOTIFICATIONS_ENABLED": "true", "DESKTOP_NOTIFICATIONS_SOUND": "false"})
    assert notifier is not None and notifier.enable_sound is False
    assert notifier.backend.name == "freedesktop-dbus"


# -- macOS and Windows cannot run here: the exact program and arguments ------------

HOSTILE = ['He said "hi" \\ $(id)', "--help", "'; Remove-Item -Recurse C:\\ #"]


@pytest.mark.parametrize("title", HOSTILE)
def test_osascript_gets_user_text_only_as_arguments(title):
    message = DesktopMessage(title=title, body="body `uname`", level=NotificationLevel.INFO, sound=True)
    argv = list(osascript_invocation(message).argv)
    assert argv == ["osascript", "-e", "on run argv", "-e",
                    "display notification (item 2 of argv) with title (item 1 of argv) sound name (item 3 of argv)",
                    "-e", "end run", "--", title, "body `uname`", "Glass"]
    silent = list(osascript_invocation(DesktopMessage(title, "b", NotificationLevel.INFO, sound=False)).argv)
    assert "sound name" not in " ".join(silent) and silent[-2:] == [title, "b"]


@pytest.mark.parametrize("title", HOSTILE)
def test_powershell_gets_user_text_only_in_the_environment(title):
    invocation = powershell_invocation(DesktopMessage(title=title, body="b $env:PATH", level=NotificationLevel.INFO, app_name="AFS"))
    assert list(invocation.argv) == ["powershell.exe", "-NoProfile", "-NonInteractive", "-ExecutionPolicy",
                                     "Bypass", "-Command", POWERSHELL_TOAST]
    assert dict(invocation.env) == {"AFS_TOAST_TITLE": title, "AFS_TOAST_BODY": "b $env:PATH", "AFS_TOAST_SILENT": "0"}
    assert title not in POWERSHELL_TOAST and "CreateTextNode($env:AFS_TOAST_TITLE)" in POWERSHELL_TOAST


def test_the_command_really_runs_without_a_shell(tmp_path, monkeypatch, afs_plugins, make_event):
    # A stand-in "osascript" records its argv, so the exact argument list is what runs.
    record = tmp_path / "argv.txt"
    program = tmp_path / "osascript"
    program.write_text(f"#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\" >> {record}; done\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    backend = commands.CommandBackend("macos-osascript", "osascript", osascript_invocation)
    title = 'He said "hi" \\ $(id)'
    assert DesktopNotifier(backend=backend).send(make_event(title=title))
    lines = record.read_text().splitlines()
    assert lines[lines.index("--") + 1] == f"✅ {title}"


def test_a_failing_command_is_a_failure_with_its_words(tmp_path, monkeypatch, afs_plugins, make_event):
    program = tmp_path / "osascript"
    program.write_text("#!/bin/sh\necho 'execution error: Not authorised' >&2\nexit 1\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    backend = commands.CommandBackend("macos-osascript", "osascript", osascript_invocation)
    outcome = DesktopNotifier(backend=backend).send_with_outcome(make_event())
    assert not outcome.delivered and "Not authorised" in outcome.error


def test_compose_is_short_and_readable(make_event):
    message = compose(make_event(EventType.COST_THRESHOLD_EXCEEDED, "Cost threshold exceeded: m",
                                 "Cost reached $12.50, over the $10.00 threshold.", cost=12.5, context={"threshold": 10.0}))
    assert message.title == "⚠️ Cost threshold exceeded: m"
    assert message.body == "Cost reached $12.50, over the $10.00 threshold.\nCost: $12.50 · Threshold: $10.00"


def test_a_bus_that_stalls_after_login_fails_within_a_second(stalled_bus, afs_plugins, make_event):
    started = time.monotonic()
    outcome = DesktopNotifier(backend=FreedesktopBackend()).send_with_outcome(make_event())
    assert time.monotonic() - started < 1.0 and not outcome.delivered
    started = time.monotonic()
    assert DesktopNotifier.from_env({"DESKTOP_NOTIFICATIONS_ENABLED": "true"}) is None
    assert time.monotonic() - started < 1.0


def test_metric_names_are_cleaned_too(notification_server, afs_plugins, make_event):
    DesktopNotifier().send(make_event(message="ok", metrics={"acc\x1b[2J\u202e\ud800": 0.9}))
    body = notification_server.calls[0][4]
    assert "\x1b" not in body and "\u202e" not in body and "acc[2J: 0.9" in body


def test_notify_send_argv_matches_the_dbus_call():
    from afs_desktop.backends.commands import notify_send_invocation

    critical = notify_send_invocation(DesktopMessage("t", "<b>x</b>", NotificationLevel.CRITICAL, "AFS"))
    assert list(critical.argv) == ["notify-send", "-u", "critical", "-a", "AFS", "-t", "0", "--", "t", "&lt;b&gt;x&lt;/b&gt;"]
    normal = notify_send_invocation(DesktopMessage("--help", "b", NotificationLevel.INFO, "AFS"))
    assert list(normal.argv) == ["notify-send", "-u", "normal", "-a", "AFS", "--", "--help", "b"]
