"""The fixtures afs-core gives plugin authors behave as documented."""

from afs_core import Channel, EventType, hookimpl, send_now
from afs_core.delivery.direct import send_many_now
from afs_core.plugins import get_plugins
from afs_core.testing import RecordingChannel, would_send


def test_afs_plugins_is_clean_and_the_process_default(afs_plugins):
    assert set(afs_plugins.channels) == {"console", "recording"}
    assert get_plugins() is afs_plugins
    assert afs_plugins.strict


def test_afs_manager_delivers_to_the_recording_channel(afs_manager, recording_channel, make_event):
    result = afs_manager.send_event(make_event(metrics={"acc": 0.9}))
    assert result.delivered == ["recording"]
    assert recording_channel.messages[0].startswith("✅ Training completed: tiny-model")


def test_would_send_shows_the_message_after_hooks_without_sending(afs_plugins, make_event):
    class Shout:
        @hookimpl
        def afs_format_event(self, event, channel):
            return event.title.upper()

        @hookimpl
        def afs_filter_event(self, event, channel):
            return event.event_type is not EventType.BATCH_PROCESSED

    afs_plugins.register(Shout(), name="shout")
    channel = RecordingChannel()
    assert would_send(channel, make_event()) == "TRAINING COMPLETED: TINY-MODEL"
    assert would_send(channel, make_event(EventType.BATCH_PROCESSED, "b")) is None
    assert channel.messages == []


def test_sending_now_uses_the_hooks_of_the_default_host(afs_plugins, make_event):
    class Tag:
        @hookimpl
        def afs_format_event(self, event, channel):
            return f"tagged {event.run_id}"

    afs_plugins.register(Tag(), name="tag")
    channel = RecordingChannel()
    outcome = send_now(channel, make_event())
    assert outcome.delivered and channel.messages == ["tagged run-1"]
    assert [o.delivered for o in send_many_now(channel, [make_event(), make_event()])] == [True, True]


def test_sending_now_reports_a_failure_and_never_raises(afs_plugins, make_event):
    class Broken(Channel):
        def deliver(self, message):
            raise RuntimeError("bug")

    outcome = send_now(Broken(), make_event())
    assert not outcome.delivered and outcome.permanent and outcome.error == "RuntimeError: bug"
    assert [o.delivered for o in send_many_now(Broken(), [make_event()] * 3)] == [False] * 3


def test_isolated_env_leaves_no_settings(monkeypatch, afs_isolated_env):
    import os

    assert [k for k in os.environ if k.startswith(("AFS_", "SLACK_"))] == ["AFS_HOME"]
    assert os.environ["AFS_HOME"].startswith(os.path.dirname(str(afs_isolated_env)))
    assert os.getcwd() == str(afs_isolated_env)


def test_send_enriches_like_the_manager(afs_plugins, make_event):
    class Link:
        @hookimpl
        def afs_enrich_event(self, event):
            return {"run_url": "https://runs.example/1"}

    afs_plugins.register(Link(), name="link")
    channel = RecordingChannel()
    send_now(channel, make_event())
    assert "https://runs.example/1" in channel.messages[0]
    assert "https://runs.example/1" in would_send(channel, make_event())


def test_sending_something_that_is_not_an_event_fails_for_good(afs_plugins):
    channel = RecordingChannel()
    outcome = send_now(channel, {"title": "seed dict"})
    assert not outcome.delivered and outcome.permanent and "not a NotificationEvent" in outcome.error
    assert [o.delivered for o in send_many_now(channel, [None, "x"])] == [False, False]
    assert channel.messages == []
