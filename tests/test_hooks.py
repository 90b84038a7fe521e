"""One test per hook (the meta-test below keeps it that way)."""

import inspect
import re
from pathlib import Path

import pytest

from afs_core import (
    Channel,
    EventType,
    NotificationManager,
    PermanentDeliveryError,
    TransientDeliveryError,
    hookimpl,
    hookspecs,
)
from afs_core.testing import RecordingChannel

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def _hookspec_names():
    return sorted(
        name
        for name, obj in vars(hookspecs).items()
        if name.startswith("afs_") and callable(obj) and hasattr(obj, "afs_spec")
    )


def test_every_hookspec_has_a_test_named_after_it():
    names = _hookspec_names()
    assert len(names) >= 6
    tests = {name for name in globals() if name.startswith("test_hook_")}
    missing = [name for name in names if f"test_hook_{name}" not in tests]
    assert not missing, f"hookspecs without a test_hook_<name> test: {missing}"


def test_every_hookspec_is_documented_with_its_signature():
    docs = DOCS.read_text(encoding="utf-8")
    for name in _hookspec_names():
        spec = getattr(hookspecs, name)
        params = ", ".join(inspect.signature(spec).parameters)
        assert f"{name}({params})" in docs, f"{name}({params}) not documented in {DOCS.name}"
        assert spec.__doc__ and all(
            f":param {p}:" in spec.__doc__ for p in inspect.signature(spec).parameters
        ), f"{name} docstring lacks :param: lines"


class AcmeChannel(Channel):
    def __init__(self):
        self.sent = []

    def format(self, event):
        return {"text": event.title}

    def deliver(self, message):
        self.sent.append(message)


def test_hook_afs_register_channels(afs_plugins):
    class Plugin:
        @hookimpl
        def afs_register_channels(self, register):
            register("acme", AcmeChannel)

    afs_plugins.register(Plugin(), name="acme-plugin")
    spec = afs_plugins.channels["acme"]
    assert spec.channel_class is AcmeChannel and spec.plugin == "acme-plugin"
    assert AcmeChannel.name == "acme"
    assert {"console", "recording", "acme"} <= set(afs_plugins.channels)


def test_hook_afs_enrich_event(afs_manager, recording_channel):
    class Plugin:
        @hookimpl
        def afs_enrich_event(self, event):
            return {"run_url": f"https://runs.example/{event.run_id}", "model": "overridden?"}

    afs_manager.plugins.register(Plugin(), name="enricher")
    result = afs_manager.notify("t", "m", run_id="r1", model="caller-wins")
    assert result.event.context["run_url"] == "https://runs.example/r1"
    assert result.event.context["model"] == "caller-wins"
    assert "Run url: https://runs.example/r1" in recording_channel.messages[0]


def test_hook_afs_filter_event(afs_manager, recording_channel):
    class Plugin:
        @hookimpl
        def afs_filter_event(self, event, channel):
            return event.event_type is not EventType.BATCH_PROCESSED

    afs_manager.plugins.register(Plugin(), name="quiet")
    held = afs_manager.notify_batch_processed("m", "r", batch=7)
    sent = afs_manager.notify_epoch_completed("m", "r", epoch=1)
    assert held.filtered == ["recording"] and not held.delivered
    assert sent.delivered == ["recording"]
    assert len(recording_channel.messages) == 1


def test_hook_afs_format_event(afs_manager, recording_channel):
    class Plugin:
        @hookimpl
        def afs_format_event(self, event, channel):
            if isinstance(channel, RecordingChannel) and event.event_type is EventType.TRAINING_COMPLETED:
                return f"custom: {event.model_name}"
            return None

    afs_manager.plugins.register(Plugin(), name="renderer")
    afs_manager.notify_training_completed("m", "r", duration=1.0)
    afs_manager.notify_training_started("m", "r")
    assert recording_channel.messages[0] == "custom: m"
    # Other events still get the channel's own format (the core default runs last).
    assert recording_channel.messages[1].startswith("ℹ️ Training started: m")


def test_hook_afs_deliver(afs_plugins):
    seen = []

    class RetryOnce:
        @hookimpl(wrapper=True)
        def afs_deliver(self, message, channel, event):
            try:
                return (yield)
            except TransientDeliveryError:
                seen.append("retried")
                return channel.deliver(message) or "second try"

    class Flaky(Channel):
        def __init__(self):
            self.calls = 0

        def deliver(self, message):
            self.calls += 1
            if self.calls == 1:
                raise TransientDeliveryError("busy", retry_after=0)

    afs_plugins.register(RetryOnce(), name="retry")
    manager = NotificationManager(plugins=afs_plugins, background=False)
    flaky = Flaky()
    manager.register_handler("flaky", flaky)
    result = manager.notify("t", "m")
    assert result["flaky"] is True
    assert seen == ["retried"] and flaky.calls == 2


def test_hook_afs_delivery_failed(afs_plugins):
    failures = []

    class Observer:
        @hookimpl
        def afs_delivery_failed(self, event, channel, error):
            failures.append((event.title, channel.name, str(error), error.permanent))

    afs_plugins.register(Observer(), name="observer")
    manager = NotificationManager(plugins=afs_plugins, background=False)
    manager.register_handler("broken", RecordingChannel(fail_with=PermanentDeliveryError("gone")))
    result = manager.notify("t", "m")
    assert failures == [("t", "recording", "gone", True)]
    assert result.failed == {"broken": "gone"}


def test_hook_afs_register_commands(afs_plugins, capsys):
    from afs_core.cli import main

    class Plugin:
        @hookimpl
        def afs_register_commands(self, register):
            register("greet", lambda parser: parser.add_argument("who"), lambda args: print(f"hi {args.who}") or 0,
                      help="greet someone")

    afs_plugins.register(Plugin(), name="greeter")
    assert afs_plugins.commands()["greet"].plugin == "greeter"
    assert main(["greet", "you"]) == 0 and capsys.readouterr().out == "hi you\n"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "greet someone (from greeter)" in capsys.readouterr().out


def test_a_misspelt_hook_is_rejected(afs_plugins, caplog):
    class Typo:
        @hookimpl
        def afs_format_evnt(self, event, channel):
            return "never"

    strict_free = type(afs_plugins)(load_entry_points=False)
    assert strict_free.register(Typo(), name="typo") is None
    assert "typo" not in dict(strict_free.pm.list_name_plugin())
    assert "unknown hook" in strict_free.failures[0].error
    from afs_core.errors import PluginLoadError

    with pytest.raises(PluginLoadError, match="typo"):
        afs_plugins.register(Typo(), name="typo")


def test_hookspecs_take_keyword_arguments_only_in_calls():
    # Every spec parameter has a name a plugin can rely on; none is positional-only.
    for name in _hookspec_names():
        for param in inspect.signature(getattr(hookspecs, name)).parameters.values():
            assert param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
            assert re.fullmatch(r"[a-z_]+", param.name)


def test_markers_and_entry_point_group_share_the_project_name():
    from afs_core.plugins import ENTRY_POINT_GROUP

    assert hookimpl.project_name == hookspecs.hookspec.project_name == ENTRY_POINT_GROUP == "afs"
